//! Command definitions (clap) and dispatch. Each command lives in its own file under `cli/`.

mod agents;
mod certs;
mod common;
mod faults;
mod migrate;
mod node;
mod status;
mod tree;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// tether: run a cluster of agent nodes over QUIC with mutual TLS, inspect it, break it.
#[derive(Debug, Parser)]
#[command(name = "tether", version, propagate_version = true)]
#[command(
    after_help = "Start here: `tether up` runs a local cluster (2 remote + 1 local node) \
in ./.tether; `tether status` shows how every node sees every other; `tether partition --isolate r1` \
and `tether heal` break and mend the network; Ctrl-C or `tether down` stops it."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the cluster keeps its certificates and node state.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StateDirArg {
    /// State directory: CA, certificates, and one folder per node.
    #[arg(
        long,
        env = "TETHER_STATE_DIR",
        default_value = ".tether",
        global = true
    )]
    state_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a local cluster: N remote + M local node processes on loopback.
    ///
    /// Makes a dev CA and node certificates in the state directory if there are none, waits
    /// until every node sees every other node `up`, prints the nodes, and stays in the
    /// foreground until Ctrl-C stops them all. With --detach it returns once the cluster is
    /// up; `tether down` stops it.
    Up(up::UpArgs),
    /// Stop every node of the cluster in the state directory.
    Down(up::DownArgs),
    /// Run one node (the production path).
    Node(node::NodeArgs),
    /// Show every node and how it sees every other node (up / unreachable / down, RTT).
    Status(status::StatusArgs),
    /// Wait until nodes see their peers in a given state (for scripts and tests).
    Wait(status::WaitArgs),
    /// Cut the network between nodes (fault layer rules inside each node).
    ///
    /// Groups are comma-separated node names: `tether partition r1,l1 r2` cuts every node of
    /// one group from every node of the others. Nodes named in no group keep talking to all.
    /// The operator's control plane is never cut, so the cluster can always be inspected and
    /// healed. `tether heal` removes every rule.
    Partition(faults::PartitionArgs),
    /// Remove every fault rule from every node.
    Heal(faults::HealArgs),
    /// Get-or-spawn an agent of a registered kind: prints its id, node and epoch.
    Spawn(agents::SpawnArgs),
    /// Send an agent a JSON message without waiting for a reply.
    Tell(agents::TellArgs),
    /// Send an agent a JSON message and print its JSON reply.
    Ask(agents::AskArgs),
    /// Every agent in the cluster: node, epoch, status, placement, durability.
    Agents(agents::AgentsArgs),
    /// Move an agent to another node with its state and unhandled messages.
    Migrate(migrate::MigrateArgs),
    /// Move every agent off a node (before an upgrade), which then takes no new agents.
    Drain(migrate::DrainArgs),
    /// The supervision trees of the cluster: nodes, supervisors, agents, restarts, failures.
    Tree(tree::TreeArgs),
    /// Supervisor groups (one-for-all, rest-for-one...).
    #[command(subcommand)]
    Group(tree::GroupCommand),
    /// Certificates for a real deployment.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up(a) => up::up(a).await,
        Command::Down(a) => up::down(a).await,
        Command::Node(a) => node::run(a).await,
        Command::Status(a) => status::status(a).await,
        Command::Wait(a) => status::wait(a).await,
        Command::Partition(a) => faults::partition(a).await,
        Command::Heal(a) => faults::heal(a).await,
        Command::Spawn(a) => agents::spawn(a).await,
        Command::Tell(a) => agents::tell(a).await,
        Command::Ask(a) => agents::ask(a).await,
        Command::Agents(a) => agents::agents(a).await,
        Command::Migrate(a) => migrate::migrate(a).await,
        Command::Drain(a) => migrate::drain(a).await,
        Command::Tree(a) => tree::tree(a).await,
        Command::Group(c) => tree::group(c).await,
        Command::Certs(c) => certs::run(c),
    }
}
