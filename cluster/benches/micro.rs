//! Micro benchmarks of the pure pieces on the hot paths: the agent protocol's frames, the
//! directory's owner hash, the peer queue, the failure detector and the link rule.
//!
//! `cargo bench -p tether-cluster --bench micro [FILTER]` prints nanoseconds per operation
//! (median of five batches of about 100 ms, with min and max). They are for working on one
//! piece; the figures that judge tether against its anchors come from `tether-bench`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tether_actors::{AgentId, Contract, Encoding, Envelope, TellRun, TraceContext};
use tether_cluster::agents::peer_queue::PeerQueue;
use tether_cluster::agents::protocol::Request;
use tether_cluster::directory::placement as directory;
use tether_cluster::membership::detector::{Detector, DetectorConfig};
use tether_cluster::membership::link::{self, LinkView};
use tether_cluster::net::wire::{self, FrameBuf, Layout};

/// Times `op` (which does `per_call` operations) and prints ns per operation.
fn bench(filter: Option<&str>, name: &str, per_call: u64, mut op: impl FnMut()) {
    if filter.is_some_and(|f| !name.contains(f)) {
        return;
    }
    // calls per batch: double until a batch takes about 20 ms, then make it five times longer
    let mut calls = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..calls {
            op();
        }
        if t.elapsed() >= Duration::from_millis(20) {
            break;
        }
        calls *= 2;
    }
    calls *= 5;
    let mut ns: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..calls {
                op();
            }
            t.elapsed().as_nanos() as f64 / (calls * per_call) as f64
        })
        .collect();
    ns.sort_by(f64::total_cmp);
    println!(
        "{name:<44} {:>9.1} ns/op  [{:.1}..{:.1}]",
        ns[2], ns[0], ns[4]
    );
}

fn envelope(seq: u64) -> Envelope {
    Envelope {
        target: AgentId::new("sink", "bench").expect("a valid id"),
        epoch: 1,
        sender: Arc::from("b1"),
        seq,
        trace: TraceContext::new_root(),
        contract: Contract {
            name: "sink".into(),
            version: 1,
        },
        encoding: Encoding::MsgPack,
        body: Bytes::from(vec![7u8; 64]),
    }
}

/// One frame of `req`, as an agent stream carries it.
fn frame_of(req: &Request) -> Vec<u8> {
    let mut buf = Vec::new();
    wire::encode_frame_as(&mut buf, req, Layout::Compact).expect("encodes");
    buf
}

fn main() {
    // `cargo bench` passes `--bench`; the first other argument filters by name
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let filter = filter.as_deref();

    let ask = Request::Ask {
        req: 42,
        env: envelope(1),
        deadline_ms: 30_000,
    };
    let mut buf = Vec::with_capacity(1024);
    bench(filter, "frame: encode an ask (64-byte body)", 1, || {
        buf.clear();
        wire::encode_frame_as(&mut buf, black_box(&ask), Layout::Compact).expect("encodes");
    });
    let frame = frame_of(&ask);
    let mut frames = FrameBuf::new(1 << 20);
    bench(filter, "frame: decode an ask (64-byte body)", 1, || {
        frames.push(black_box(&frame));
        black_box(frames.take::<Request>().expect("decodes").expect("whole"));
    });

    let mut run = TellRun::of(envelope(1));
    for seq in 2..=64 {
        run.push(envelope(seq));
    }
    let tells = Request::Tells { run };
    bench(
        filter,
        "frame: encode a run of 64 tells, per tell",
        64,
        || {
            buf.clear();
            wire::encode_frame_as(&mut buf, black_box(&tells), Layout::Compact).expect("encodes");
        },
    );
    let frame = frame_of(&tells);
    bench(
        filter,
        "frame: decode a run of 64 tells, per tell",
        64,
        || {
            frames.push(black_box(&frame));
            black_box(frames.take::<Request>().expect("decodes").expect("whole"));
        },
    );

    let nodes = ["r1", "r2", "r3", "r4", "r5"];
    bench(
        filter,
        "directory: owner and backup among 5 nodes",
        1,
        || {
            black_box(directory::owner_and_backup(
                black_box("sink/some-key-0042"),
                nodes,
            ));
        },
    );

    let queue = PeerQueue::<u64>::default();
    let mut taken = Vec::with_capacity(1024);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    bench(
        filter,
        "peer queue: push, then take 1 000 at once",
        1000,
        || {
            for i in 0..1000 {
                queue.push(i);
            }
            rt.block_on(queue.take(&mut taken));
            taken.clear();
        },
    );

    let now = Instant::now();
    let mut detector = Detector::new(DetectorConfig::default(), 1, now);
    let mut at = now;
    bench(filter, "detector: a heartbeat and a tick", 1, || {
        at += Duration::from_millis(150);
        black_box(detector.heartbeat(1, at));
        black_box(detector.tick(at));
    });

    let view = LinkView {
        has_current: true,
        known_incarnation: Some(3),
        ..LinkView::default()
    };
    bench(filter, "link: decide on a hello", 1, || {
        black_box(link::decide(black_box(view), black_box(3), false));
    });
}
