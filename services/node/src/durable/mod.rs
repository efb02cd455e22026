//! What a node keeps on its disk so that it survives a crash: files replaced atomically, segment files, and the
//! Track [`outbox`] built on them.

pub mod outbox;
