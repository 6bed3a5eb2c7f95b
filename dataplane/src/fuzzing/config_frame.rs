//! The `config_frame` target: control-socket frames, config validation and table builds.

use std::cell::OnceCell;
use std::sync::Arc;

use portcullis_api::CompiledConfig;
use portcullis_api::frame::{self, FrameHeader, MAGIC, PREFIX_BYTES};

use super::connection::new_shard;
use crate::route::Snapshot;
use crate::shard::Shard;

thread_local! {
    static CONFIG_SHARD: OnceCell<Shard> = const { OnceCell::new() };
}

/// Reads a config the way the control socket does, then validates it and builds its tables.
///
/// Input starting with the frame magic is a whole frame (header, checksum, payload). Anything
/// else is a payload, framed here with its correct checksum so the JSON decoder, validation
/// and the table build see it. A config that decodes must survive an encode/decode round
/// trip unchanged.
pub fn config_frame(data: &[u8]) {
    let decoded = if data.starts_with(&MAGIC) {
        frame::decode(data)
    } else {
        let Ok(frame) = frame::encode_payload(data) else {
            return;
        };
        read_frame(&frame)
    };
    let Ok(config) = decoded else {
        return;
    };

    let encoded = frame::encode(&config).unwrap_or_else(|e| panic!("re-encoding failed: {e}"));
    let again = read_frame(&encoded).unwrap_or_else(|e| panic!("re-encoded frame refused: {e}"));
    assert_eq!(again, config, "encode/decode round trip changed the config");
    assert_eq!(again.content_hash(), config.content_hash());
    let _ = config.redacted();

    if let Ok(snapshot) = Snapshot::build(&config) {
        assert_eq!(snapshot.generation, config.generation);
        assert!(portcullis_api::validate::validate(&config).is_ok());
        for port in &config.ports {
            assert!(
                snapshot
                    .port_of(port.port, port.protocol.transport())
                    .is_some(),
                "port {} lost",
                port.port
            );
        }
        // What each core does on install: TLS configs, cursors, counters.
        CONFIG_SHARD.with(|shard| {
            let shard = shard.get_or_init(|| new_shard(0));
            let _ = shard.build(Arc::new(snapshot));
        });
    }
}

/// Parses a frame produced by `encode`/`encode_payload`; panics if its header is refused.
fn read_frame(frame: &[u8]) -> Result<CompiledConfig, frame::FrameError> {
    let mut bytes = [0u8; PREFIX_BYTES];
    bytes.copy_from_slice(&frame[..PREFIX_BYTES]);
    let header =
        FrameHeader::parse(&bytes).unwrap_or_else(|e| panic!("own frame header refused: {e}"));
    assert_eq!(header.body_len(), frame.len() - PREFIX_BYTES);
    header.decode_body(&frame[PREFIX_BYTES..])
}

#[cfg(test)]
mod tests {
    use crate::fuzzing::tests::replay;

    #[test]
    fn fuzzing_config_frame_replays() {
        replay("config_frame");
    }
}
