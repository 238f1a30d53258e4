//! Every decoder that reads bytes from a peer, an operator or a file, each behind one function
//! of arbitrary bytes. The fuzz targets (`fuzz/`) and the property test (`tests/decoders.rs`)
//! drive these same entry points, so what is fuzzed is what the node runs.
//!
//! Each returns whether something in the input decoded (so a test can tell that its inputs
//! reach past the first check); none may panic, loop or allocate without bound, whatever the
//! bytes.

use tether_actors::builtin::CounterMsg;
use tether_actors::{codec, AgentId, Body, Envelope};
use tether_cluster::agents::protocol::{Request, Response, MAX_AGENT_FRAME};
use tether_cluster::control::protocol::{decode_request, ControlResponse};
use tether_cluster::membership::Heartbeat;
use tether_cluster::net::wire::{FrameBuf, PeerMsg, WireError};

/// A decoder's entry point: arbitrary bytes in, whether something decoded out.
pub type Decoder = fn(&[u8]) -> bool;

/// The decoders by name, as the fuzz targets are named.
pub const ALL: &[(&str, Decoder)] = &[
    ("frames", frames),
    ("envelope", envelope),
    ("control", control),
    ("link", link),
    ("outbox", outbox),
    ("checkpoint", checkpoint),
];

/// An agent stream: length-prefixed frames of requests (tells, runs of tells, asks, directory
/// messages) or of responses, arriving in pieces. The first byte picks the piece size and
/// which side of the stream is read.
pub fn frames(data: &[u8]) -> bool {
    let Some((&first, data)) = data.split_first() else {
        return false;
    };
    let chunk = usize::from(first >> 1).max(1);
    let requests = first & 1 == 0;
    let mut buf = FrameBuf::new(MAX_AGENT_FRAME);
    let mut decoded = false;
    for piece in data.chunks(chunk) {
        buf.push(piece);
        loop {
            let next = if requests {
                buf.take::<Request>().map(|r| r.map(touch_request))
            } else {
                buf.take::<Response>().map(|r| r.map(|_| ()))
            };
            match next {
                Ok(Some(())) => decoded = true,
                Ok(None) => break,
                // the stream cannot be trusted past an oversized frame: the node closes it
                Err(WireError::TooLarge { .. }) => return decoded,
                // a frame that does not decode is consumed and answered; the stream goes on
                Err(_) => {}
            }
        }
    }
    decoded
}

/// What a node does with a request's contents before any agent sees it.
fn touch_request(req: Request) {
    match req {
        Request::Tells { run } => run.into_envelopes().for_each(touch_envelope),
        Request::Tell { env } | Request::Deliver { env, .. } | Request::Ask { env, .. } => {
            touch_envelope(env)
        }
        Request::Dir(msg) => {
            let _ = msg.summary();
        }
        // a replica is stored as it came, and read back as a checkpoint record
        Request::Replicate { cps, .. } => {
            for cp in cps {
                let _ = cp.size();
                let _ = tether_actors::codec::decode::<i64>(&cp.state);
            }
        }
        Request::Newest { id, .. }
        | Request::Discard { id, .. }
        | Request::Drained { id, .. }
        | Request::Barrier { id, .. }
        | Request::Migrate { id, .. } => {
            let _ = id.kind();
        }
        Request::Install { spec, cp, .. } => {
            let _ = spec.record();
            let _ = tether_actors::codec::decode::<i64>(&cp.state);
        }
    }
}

fn touch_envelope(env: Envelope) {
    let _ = env.target.kind();
    let _ = Body::Encoded(env.encoding, env.body.clone()).decode::<serde_json::Value>();
    let _ = Body::Encoded(env.encoding, env.body).decode::<CounterMsg>();
}

/// One envelope, its body as an agent would decode it, and an agent id as text (the CLI and
/// peers name agents as `kind/key`).
pub fn envelope(data: &[u8]) -> bool {
    let id = std::str::from_utf8(data).is_ok_and(|s| s.parse::<AgentId>().is_ok());
    match codec::decode::<Envelope>(data) {
        Ok(env) => {
            touch_envelope(env);
            true
        }
        Err(_) => id,
    }
}

/// The control plane: a request as a node reads it from the operator, a response as the CLI
/// reads it from a node.
pub fn control(data: &[u8]) -> bool {
    let req = decode_request(data).is_ok();
    let resp = codec::decode_named::<ControlResponse>(data).is_ok();
    req || resp
}

/// The link between nodes: hellos and gossip on the link stream, heartbeat datagrams.
pub fn link(data: &[u8]) -> bool {
    let msg = codec::decode_named::<PeerMsg>(data).is_ok();
    let hb = codec::decode_named::<Heartbeat>(data).is_ok();
    msg || hb
}

/// A local node's outbox log, as it is read back after a crash. The first byte picks what
/// the rest is: (even) a log as found on disk, or (odd) record payloads, each given a valid
/// header so that the record decoder behind the checksum is reached; a payload's length is
/// the byte before it.
pub fn outbox(data: &[u8]) -> bool {
    use tether_node_local::outbox::{check_log, frame_payload};
    let Some((&first, rest)) = data.split_first() else {
        return false;
    };
    if first & 1 == 0 {
        return matches!(check_log(rest), Ok((n, _)) if n > 0);
    }
    let mut log = Vec::new();
    let mut at = rest;
    while let Some((&len, tail)) = at.split_first() {
        let (payload, tail) = tail.split_at(usize::from(len).min(tail.len()));
        log.extend_from_slice(&frame_payload(payload));
        at = tail;
    }
    matches!(check_log(&log), Ok((n, _)) if n > 0)
}

/// A checkpoint record as a node's checkpoint store reads it back from its file.
pub fn checkpoint(data: &[u8]) -> bool {
    match tether_cluster::durable::store::decode_record(data) {
        Ok(cp) => {
            let _ = cp.size();
            true
        }
        Err(_) => false,
    }
}

/// Valid inputs for decoder `name`, to start fuzzing from (and for the property test to
/// mutate): what a well-behaved peer, operator or crash would leave.
///
/// # Panics
/// For an unknown name, or if the outbox sample cannot be written under the temp directory.
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "frames" => frame_seeds(),
        "envelope" => vec![enc(&sample_env(1, b"\"inc\"")), b"counter/c".to_vec()],
        "control" => control_seeds(),
        "link" => link_seeds(),
        "outbox" => outbox_seeds(),
        "checkpoint" => checkpoint_seeds(),
        other => panic!("no decoder named {other}"),
    }
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    codec::encode(v).expect("a seed encodes")
}

fn sample_env(seq: u64, body: &[u8]) -> Envelope {
    Envelope {
        target: "counter/c".parse().expect("a valid id"),
        epoch: 1 << 40,
        sender: "r1".into(),
        seq,
        trace: tether_actors::TraceContext::new_root(),
        contract: tether_actors::Contract {
            name: "counter".into(),
            version: 1,
        },
        encoding: tether_actors::Encoding::Json,
        body: bytes::Bytes::copy_from_slice(body),
    }
}

/// A stream of frames: the first byte as [`frames`] reads it, then length-prefixed bodies.
fn framed(first: u8, bodies: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![first];
    for b in bodies {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    }
    out
}

fn frame_seeds() -> Vec<Vec<u8>> {
    let mut run = tether_actors::TellRun::of(sample_env(1, b"\"inc\""));
    run.push(sample_env(2, b"{\"add\":2}"));
    let requests = [
        enc(&Request::Tell {
            env: sample_env(1, b"\"inc\""),
        }),
        enc(&Request::Tells { run }),
        enc(&Request::Ask {
            req: 7,
            env: sample_env(3, b"\"get\""),
            deadline_ms: 1000,
        }),
    ];
    let responses = [enc(&Response::Done {
        req: 7,
        result: Err(tether_actors::AgentError::NotFound {
            id: "counter/c".into(),
        }),
    })];
    vec![framed(0x20, &requests), framed(0x21, &responses)]
}

fn control_seeds() -> Vec<Vec<u8>> {
    use tether_cluster::control::protocol::{ControlRequest, Versioned, CONTROL_VERSION};
    vec![
        enc(&Versioned {
            v: CONTROL_VERSION,
            msg: ControlRequest::Status,
        }),
        enc(&Versioned {
            v: CONTROL_VERSION,
            msg: ControlRequest::ClearFaults,
        }),
        enc(&ControlResponse::Ok),
    ]
}

fn link_seeds() -> Vec<Vec<u8>> {
    let node = tether_cluster::NodeInfo {
        name: "r1".into(),
        role: tether_cluster::Role::Remote,
        addr: "127.0.0.1:7000".parse().expect("an address"),
        incarnation: 3,
        kinds: vec!["counter".into()],
        caps: Vec::new(),
    };
    vec![
        enc(&PeerMsg::Hello {
            protocol: tether_cluster::net::wire::PROTOCOL_VERSION,
            node: node.clone(),
            replace: false,
        }),
        enc(&PeerMsg::Gossip {
            members: vec![node],
        }),
        enc(&Heartbeat {
            incarnation: 3,
            seq: 9,
            fences: 1,
            fenced: false,
            down: false,
            unreachable: vec!["r2".into()],
        }),
    ]
}

/// An outbox log with two queued tells, written by the outbox itself, in both of the forms
/// [`outbox`] reads: as found on disk, and as payloads it frames.
fn outbox_seeds() -> Vec<Vec<u8>> {
    let log = outbox_log();
    let mut payloads = vec![1u8];
    let mut at = &log[..];
    // the log's records: 4 bytes of length, 8 of checksum, the payload
    while at.len() >= 12 {
        let len = u32::from_le_bytes(at[..4].try_into().expect("4 bytes")) as usize;
        let payload = &at[12..12 + len];
        if let Ok(short) = u8::try_from(len) {
            payloads.push(short);
            payloads.extend_from_slice(payload);
        }
        at = &at[12 + len..];
    }
    let mut on_disk = vec![0u8];
    on_disk.extend_from_slice(&log);
    vec![on_disk, payloads]
}

fn outbox_log() -> Vec<u8> {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tether-seed-{}-{call}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp directory");
    let path = dir.join("outbox.log");
    let _ = std::fs::remove_file(&path);
    let mut ob = tether_node_local::outbox::Outbox::open(&path, 16).expect("an outbox");
    ob.push(sample_env(1, b"\"inc\""), 5).expect("room");
    ob.push(sample_env(2, b"\"get\""), 6).expect("room");
    drop(ob);
    let bytes = std::fs::read(&path).expect("the log");
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

fn checkpoint_seeds() -> Vec<Vec<u8>> {
    use tether_cluster::durable::{Checkpoint, SenderMark, Timer, Version};
    let cp = Checkpoint {
        id: "counter/c".parse().expect("a valid id"),
        version: Version {
            epoch: 2 << 40 | 77,
            seq: 9,
        },
        state: bytes::Bytes::from_static(b"\x05"),
        marks: vec![SenderMark {
            sender: "r1".into(),
            seq: 9,
        }],
        timers: vec![Timer {
            name: "tick".into(),
            deadline_unix_ms: 1_800_000_000_000,
        }],
        taken_unix_ms: 1_799_999_999_000,
        since_epoch: 0,
    };
    vec![tether_cluster::durable::store::encode_record(&cp).expect("a seed encodes")]
}
