//! `tether certs`: the cluster CA and node certificates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use tether_cluster::net::certs::CertDir;

#[derive(Debug, Subcommand)]
pub(crate) enum CertsCommand {
    /// Create a CA (if DIR has none), the operator certificate, and one certificate per node.
    ///
    /// Running it again with more names adds nodes signed by the same CA; existing
    /// certificates are kept. Copy DIR/ca.pem and DIR/nodes/NAME/ to each node's host and run
    /// `tether node --name NAME --state-dir DIR` there; keep DIR/ca.key offline.
    Init {
        /// Directory to write into.
        #[arg(long)]
        dir: PathBuf,
        /// Node names, comma-separated (lowercase letters, digits and '-').
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
}

pub(crate) fn run(cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CertsCommand::Init { dir, nodes } => {
            for n in &nodes {
                tether_cluster::identity::validate_name(n)?;
            }
            let certs = CertDir::new(&dir);
            let created = certs
                .ensure_ca()
                .with_context(|| format!("creating CA in {}", dir.display()))?;
            println!(
                "{} CA      {}",
                if created { "created" } else { "kept   " },
                certs.ca_cert().display()
            );
            let admin = certs.ensure_admin()?;
            println!(
                "{} admin   {}",
                if admin { "created" } else { "kept   " },
                dir.join("admin").display()
            );
            for n in &nodes {
                let made = certs.ensure_node(n)?;
                println!(
                    "{} node    {} ({})",
                    if made { "created" } else { "kept   " },
                    n,
                    certs.node_dir(n).display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
