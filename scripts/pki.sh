# Sourced by scripts that need a throwaway PKI on loopback (make cluster-up, the TLS A/B of loadtest.sh).
# make_local_pki DIR: a CA (ca.pem, ca.key) and, signed by it, EC P-256 certificates for 127.0.0.1 and localhost:
# server.pem/.key (client ports), etcd.pem/.key (etcd's server) and etcd-client.pem/.key (CN aisle); a random
# bearer token (token) and the token file holding its digest with every scope (tokens.toml); a pseudonym key
# (pseudonym.key). Does nothing when DIR/ca.pem exists. Each node's peer certificate: peer_cert DIR NODE_ID.
make_local_pki() {
  local pki=$1 san="subjectAltName=IP:127.0.0.1,DNS:localhost"
  if [ -f "$pki/ca.pem" ]; then
    [ -f "$pki/pseudonym.key" ] || openssl rand -hex 32 >"$pki/pseudonym.key"
    return 0
  fi
  mkdir -p "$pki" && chmod 700 "$pki"
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$pki/ca.key" \
    -subj "/CN=aisle local CA" -days 30 -out "$pki/ca.pem" 2>/dev/null
  _pki_cert "$pki" server aisle-node "$san
extendedKeyUsage=serverAuth"
  _pki_cert "$pki" etcd etcd "$san
extendedKeyUsage=serverAuth,clientAuth"
  _pki_cert "$pki" etcd-client aisle "extendedKeyUsage=clientAuth"
  openssl rand -hex 32 >"$pki/pseudonym.key"
  head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$pki/token"
  cat >"$pki/tokens.toml" <<TOML
[[token]]
name = "local-operator"
sha256 = "$(sha256sum <"$pki/token" | cut -d' ' -f1)"
scopes = ["decide", "track", "subscribe", "admin:read", "admin:write"]
TOML
}

# peer_cert DIR NODE_ID: peer-NODE_ID.pem and .key, the peer certificate of node NODE_ID (server and client), which
# names the node in its URI SAN spiffe://aisle/node/NODE_ID as the peer port requires. Kept when it exists.
peer_cert() {
  local pki=$1 id=$2
  [ -f "$pki/peer-$id.pem" ] && return 0
  _pki_cert "$pki" "peer-$id" "$id" "subjectAltName=IP:127.0.0.1,DNS:localhost,URI:spiffe://aisle/node/$id
extendedKeyUsage=serverAuth,clientAuth"
}

# _pki_cert DIR NAME CN EXTENSIONS: NAME.pem and NAME.key signed by DIR's CA.
_pki_cert() {
  local pki=$1 name=$2 cn=$3 ext=$4
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$pki/$name.key" \
    -subj "/CN=$cn" -out "$pki/$name.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial -days 30 \
    -extfile <(printf '%s\n' "$ext") -out "$pki/$name.pem" 2>/dev/null
  rm -f "$pki/$name.csr"
}
