//! The node's CPU per request, read from its Prometheus endpoint (`--metrics-url http://HOST:PORT/metrics`).
//!
//! `process_cpu_seconds_total` (user + system CPU of the node's process, the standard series every Prometheus
//! exporter serves) is scraped when the recorded window opens and again once its last request has completed; the
//! growth divided by the requests completed in the window is the CPU one request cost the node, background work
//! included. It works against any node, local or remote, that serves the series. The kernel charges CPU by the tick
//! (10 ms on Linux), so a window needs some hundreds of milliseconds of node CPU for a figure to two digits.
//!
//! The scrape is a plain HTTP/1.0 `GET` (no TLS): enough for a metrics port, and no HTTP client to carry.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::error::Error;

/// The series read.
pub const CPU_SERIES: &str = "process_cpu_seconds_total";

/// How long one scrape may take.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest exposition read, bytes.
const MAX_BODY: u64 = 16 * 1024 * 1024;

/// A Prometheus endpoint to read the node's CPU time from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsEndpoint {
    url: String,
    /// `host:port` to connect to (port 80 when the URL names none).
    authority: String,
    /// The `Host` header.
    host: String,
    /// Path and query.
    path: String,
}

impl MetricsEndpoint {
    /// Parses `http://HOST[:PORT][/PATH]` (a bare `HOST:PORT` gets `http://`; no path means `/metrics`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for another scheme or no host.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let bad = |why: &str| {
            Err(Error::InvalidArgument(format!(
                "--metrics-url {url:?}: {why}"
            )))
        };
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                return bad(&format!("scheme {scheme} is not supported: use http://"));
            }
            None => url,
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        if host.is_empty() || host.contains('@') {
            return bad("expected http://HOST:PORT/metrics");
        }
        // A port is there when digits follow the last ':', outside an IPv6 literal's brackets.
        let has_port = !host.ends_with(']')
            && host
                .rsplit_once(':')
                .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let authority = if has_port {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        Ok(Self {
            url: format!("http://{host}{path}"),
            authority,
            host: host.to_string(),
            path: path.to_string(),
        })
    }

    /// The URL, normalised.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Scrapes the endpoint once and returns `process_cpu_seconds_total`.
    ///
    /// # Errors
    /// A message naming what failed: connection, HTTP status, or a missing or unreadable series.
    pub async fn cpu_seconds(&self) -> Result<f64, String> {
        let body = tokio::time::timeout(SCRAPE_TIMEOUT, self.get())
            .await
            .map_err(|_| format!("no answer from {} within {SCRAPE_TIMEOUT:?}", self.url))??;
        series_value(&body, CPU_SERIES).ok_or_else(|| {
            format!(
                "{} has no {CPU_SERIES} series (the node predates it, or this is not a Prometheus endpoint)",
                self.url
            )
        })
    }

    /// One `GET`, returning the body of a 200 answer.
    async fn get(&self) -> Result<String, String> {
        let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", self.url);
        let mut stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| fail("cannot connect to", e))?;
        // HTTP/1.0: the server closes after the answer and sends no chunked body.
        let request = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nAccept: text/plain\r\nUser-Agent: aisle-loadtest\r\n\r\n",
            self.path, self.host
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| fail("cannot send to", e))?;
        let mut raw = Vec::new();
        stream
            .take(MAX_BODY)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| fail("cannot read from", e))?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{} answered no HTTP response", self.url))?;
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            return Err(format!(
                "{} answered {}",
                self.url,
                head.lines().next().unwrap_or("nothing")
            ));
        }
        let chunked = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("transfer-encoding")
                    && v.trim().eq_ignore_ascii_case("chunked")
            })
        });
        Ok(if chunked {
            dechunk(body)
        } else {
            body.to_string()
        })
    }
}

/// A chunked body's data (for servers that chunk even for HTTP/1.0).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The value of series `name` in a Prometheus text exposition: the unlabelled sample, else the first labelled one.
pub fn series_value(text: &str, name: &str) -> Option<f64> {
    let mut labelled = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if let Some(v) = rest.strip_prefix(' ') {
            v
        } else if let Some(after_labels) = rest.strip_prefix('{').and_then(|r| r.split_once('}')) {
            after_labels.1
        } else {
            continue; // another series whose name starts with `name`
        };
        let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        if rest.starts_with(' ') {
            return Some(v);
        }
        labelled.get_or_insert(v);
    }
    labelled
}

/// The node's CPU over a recorded window.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCpu {
    /// Where it was read.
    pub url: String,
    /// CPU seconds the node used in the window (growth of `process_cpu_seconds_total`).
    pub cpu_seconds: f64,
    /// Wall time between the two scrapes.
    pub window: Duration,
    /// Requests completed in the window (every lane: the scenario's and, with `--floor`, the health checks).
    pub requests: u64,
}

impl NodeCpu {
    /// CPU µs per completed request (`None` without requests).
    pub fn us_per_request(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.cpu_seconds * 1e6 / self.requests as f64)
    }

    /// Cores the node kept busy on average over the window.
    pub fn cores(&self) -> f64 {
        if self.window.is_zero() {
            0.0
        } else {
            self.cpu_seconds / self.window.as_secs_f64()
        }
    }
}

/// The first scrape of a window, and when it was taken.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    /// When the scrape answered.
    pub at: Instant,
    /// `process_cpu_seconds_total` then.
    pub cpu_seconds: f64,
}

impl MetricsEndpoint {
    /// Scrapes now, as the start of a window.
    ///
    /// # Errors
    /// As [`MetricsEndpoint::cpu_seconds`].
    pub async fn mark(&self) -> Result<CpuMark, String> {
        let cpu_seconds = self.cpu_seconds().await?;
        Ok(CpuMark {
            at: Instant::now(),
            cpu_seconds,
        })
    }

    /// Scrapes now, closing the window opened by `start` over `requests` completed requests.
    ///
    /// # Errors
    /// As [`MetricsEndpoint::cpu_seconds`], and when the counter went back (the node restarted meanwhile).
    pub async fn since(&self, start: CpuMark, requests: u64) -> Result<NodeCpu, String> {
        let now = self.cpu_seconds().await?;
        let at = Instant::now();
        if now < start.cpu_seconds {
            return Err(format!(
                "{CPU_SERIES} at {} went back from {} to {now}: the node restarted during the run",
                self.url, start.cpu_seconds
            ));
        }
        Ok(NodeCpu {
            url: self.url.clone(),
            cpu_seconds: now - start.cpu_seconds,
            window: at - start.at,
            requests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let e = MetricsEndpoint::parse("http://127.0.0.1:9090/metrics").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.host.as_str(), e.path.as_str()),
            ("127.0.0.1:9090", "127.0.0.1:9090", "/metrics")
        );
        let e = MetricsEndpoint::parse("10.0.0.5:9090").unwrap();
        assert_eq!(
            (e.url(), e.path.as_str()),
            ("http://10.0.0.5:9090/metrics", "/metrics")
        );
        let e = MetricsEndpoint::parse("http://node-1.aisle/stats?x=1").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("node-1.aisle:80", "/stats?x=1")
        );
        let e = MetricsEndpoint::parse("http://[::1]:9090/metrics").unwrap();
        assert_eq!(e.authority, "[::1]:9090");
        let e = MetricsEndpoint::parse("http://[::1]/metrics").unwrap();
        assert_eq!(e.authority, "[::1]:80");
        for bad in ["https://x:1/metrics", "http:///metrics", "http://user@x:1/"] {
            assert!(MetricsEndpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_series_value_is_found() {
        let text = "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
                    # TYPE process_cpu_seconds_total counter\n\
                    process_cpu_seconds_total_extra 9\n\
                    process_cpu_seconds_total 12.34\n";
        assert_eq!(series_value(text, CPU_SERIES), Some(12.34));
        let labelled = "process_cpu_seconds_total{instance=\"a\"} 1.5e1 1700000000000\n";
        assert_eq!(series_value(labelled, CPU_SERIES), Some(15.0));
        assert_eq!(series_value("up 1\n", CPU_SERIES), None);
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }

    #[test]
    fn per_request_figures() {
        let cpu = NodeCpu {
            url: String::new(),
            cpu_seconds: 1.5,
            window: Duration::from_secs(3),
            requests: 10_000,
        };
        assert_eq!(cpu.us_per_request(), Some(150.0));
        assert_eq!(cpu.cores(), 0.5);
        assert_eq!(NodeCpu { requests: 0, ..cpu }.us_per_request(), None);
    }
}
