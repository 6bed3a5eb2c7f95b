//! Client side of the proxy's control socket: send one framed config, read ACK or NACK.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use portcullis_api::CompiledConfig;
use portcullis_api::frame::{self, Reply};

/// Pushes `config` to the proxy listening on `socket` and returns its reply.
///
/// `timeout` bounds the whole exchange; a proxy ACKs only after every core switched, so a
/// large config on a busy proxy may need seconds.
pub fn push(socket: &Path, config: &CompiledConfig, timeout: Duration) -> Result<Reply> {
    let frame = frame::encode(config).context("encoding the config")?;
    push_frame(socket, &frame, timeout)
}

/// Sends an already encoded frame (tests use it to send broken frames).
pub fn push_frame(socket: &Path, frame: &[u8], timeout: Duration) -> Result<Reply> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the proxy control socket {}",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream
        .write_all(frame)
        .context("sending the config frame")?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .context("reading the proxy's reply")?;
    match Reply::parse(&line) {
        Some(reply) => Ok(reply),
        None if line.is_empty() => bail!("the proxy closed the control connection without a reply"),
        None => bail!("unexpected reply from the proxy: {line:?}"),
    }
}
