//! `tether node`: run one node in the foreground until Ctrl-C, SIGTERM or `tether down`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tether_cluster::net::certs::CertDir;
use tether_cluster::net::statedir::NodeDir;
use tether_cluster::{Kinds, NodeConfig, Role, Timing};
use tracing::info;

use super::StateDirArg;

#[derive(Debug, Args)]
#[command(
    after_help = "Environment: TOKIO_WORKER_THREADS sets the node's async worker threads \
(default: one per core). Several nodes on one small machine may answer faster with fewer."
)]
pub(crate) struct NodeArgs {
    /// Node name: its certificate's DNS name (lowercase letters, digits, '-').
    #[arg(long, env = "TETHER_NAME")]
    name: String,
    /// `remote` (backend) or `local` (a user's device).
    #[arg(long, env = "TETHER_ROLE", default_value = "remote")]
    role: Role,
    /// UDP address to listen on. Default: the address this node used last time (so peers'
    /// old connections are reset at once after a restart), else 127.0.0.1 on a free port.
    #[arg(long, env = "TETHER_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address peers should dial, when --listen is a wildcard such as 0.0.0.0:7000.
    #[arg(long, env = "TETHER_ADVERTISE")]
    advertise: Option<SocketAddr>,
    /// Address of a node to join through; repeat or comma-separate for several.
    #[arg(long, env = "TETHER_SEEDS", value_delimiter = ',')]
    seed: Vec<SocketAddr>,
    /// Directory with ca.pem and nodes/NAME/{cert,key}.pem (default: the state directory).
    #[arg(long, env = "TETHER_CERTS")]
    certs: Option<PathBuf>,
    /// Seed of the fault layer's random generator (loss, jitter); random if not given.
    #[arg(long)]
    fault_seed: Option<u64>,
    /// Local nodes: most tells kept on disk (nodes/NAME/outbox.log) for agents the node cannot
    /// reach while it is offline; past it a tell fails with "outbox is full".
    #[arg(long, env = "TETHER_OUTBOX_MAX", default_value_t = tether_cluster::node::DEFAULT_OUTBOX_MAX,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    outbox_max: usize,
    /// Remote nodes: how long the set of unreachable members must stay the same before the
    /// split-brain resolver decides (the losing side fences then). Use the same value on every
    /// remote node. Milliseconds, or with a unit (3s).
    #[arg(long, env = "TETHER_SBR_STABLE_AFTER", default_value = "400ms",
          value_parser = super::agents::parse_timeout)]
    sbr_stable_after: std::time::Duration,
    /// Remote nodes: how much longer the winning side waits before it decides the others
    /// down, so that the losing side has fenced first. Same value on every remote node.
    #[arg(long, env = "TETHER_SBR_DOWN_MARGIN", default_value = "1100ms",
          value_parser = super::agents::parse_timeout)]
    sbr_down_margin: std::time::Duration,
    /// Capabilities this node offers, matched against agents' `needs` labels (`--needs` of
    /// `tether spawn`): comma-separated names such as fs,gpu. Default: `fs` on a local node
    /// (a device has files), none on a remote node. `--cap none` offers none.
    #[arg(long = "cap", env = "TETHER_CAPS", value_delimiter = ',')]
    caps: Option<Vec<String>>,
    /// Also register the demonstration kinds (flaky, sleeper, sink, ledger, audit), which let anyone
    /// who may spawn agents crash agents, hold handlers and write journals under the state
    /// directory. `tether up` turns this on for its nodes.
    #[arg(long, env = "TETHER_DEMO_KINDS")]
    demo_kinds: bool,
    #[command(flatten)]
    state: StateDirArg,
}

pub(crate) async fn run(a: NodeArgs) -> anyhow::Result<ExitCode> {
    tether::logging::init();
    let state_dir = a.state.state_dir;
    let node_dir = NodeDir::new(state_dir.join("nodes").join(&a.name));
    let listen = match a.listen {
        Some(given) => given,
        None => reuse_last_addr(node_dir.last_addr()).await,
    };
    let fault_seed = a.fault_seed.unwrap_or_else(rand_seed);
    if a.sbr_stable_after.is_zero() || a.sbr_down_margin < std::time::Duration::from_millis(500) {
        anyhow::bail!(
            "--sbr-stable-after must be more than 0 and --sbr-down-margin at least 500ms (the \
             losing side must have fenced before the winning side downs it)"
        );
    }
    let caps = match a.caps {
        None => tether_cluster::identity::default_caps(a.role),
        Some(c) if c == ["none"] => Vec::new(),
        Some(c) => {
            for cap in &c {
                tether_cluster::identity::validate_cap(cap).map_err(anyhow::Error::msg)?;
            }
            c
        }
    };
    let mut timing = Timing::default();
    timing.sbr.stable_after = a.sbr_stable_after;
    timing.sbr.down_margin = a.sbr_down_margin;
    let cfg = NodeConfig {
        name: a.name.clone(),
        role: a.role,
        listen,
        advertise: a.advertise,
        seeds: a.seed,
        certs: CertDir::new(a.certs.unwrap_or_else(|| state_dir.clone())),
        node_dir,
        timing,
        fault_seed,
        kinds: if a.demo_kinds {
            Kinds::builtin().with_demo(&state_dir)
        } else {
            Kinds::builtin()
        },
        caps,
        root_intensity: tether_supervision::Intensity::node_root(),
        outbox_max: a.outbox_max,
    };
    let node = tether::start(cfg).await?;
    let me = node.info();
    // one machine-readable line on stdout: `tether up` waits for it; logs go to stderr
    println!(
        "ready name={} role={} addr={} incarnation={} pid={}",
        me.name,
        me.role,
        me.addr,
        me.incarnation,
        std::process::id()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("interrupted"),
        _ = term.recv() => info!("terminated"),
        _ = node.shutdown_requested() => {}
    }
    node.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// The address to listen on when none is given: the one used last time if it is free (peers
/// still dialing it reach the new incarnation at once), else a free port. A port can be taken
/// meanwhile by another program, or still be held for a moment by this node's killed
/// predecessor; neither may keep the node from starting.
async fn reuse_last_addr(last: Option<SocketAddr>) -> SocketAddr {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    let Some(last) = last else { return any };
    for _ in 0..10 {
        match std::net::UdpSocket::bind(last) {
            Ok(probe) => {
                drop(probe);
                return last;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(_) => break,
        }
    }
    tracing::warn!(%last, "the address used last time is taken; listening on a free port");
    SocketAddr::new(last.ip(), 0)
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}
