//! The detection rows (`--faults`): a real 3-node cluster (`tether up --detach`: r1, r2, l1)
//! driven through the `tether` CLI, as an operator would.
//!
//! - `detect_isolate_s`: `partition --isolate r2` until r1 and l1 see r2 `unreachable` and r2
//!   sees both `unreachable`.
//! - `heal_s`: `heal` until every pair is `up` again.
//! - `detect_kill_s`: kill -9 of r2 until r1 and l1 see it `unreachable`.
//! - `failover_with_state_s`: from the same kill -9 until a counter in `acked` mode that ran
//!   on r2 (five increments acknowledged) answers 5 from r1.
//!
//! Each time includes starting the CLI processes that wait (a few milliseconds).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;

/// The `tether` CLI these rows drive: `TETHER_BIN`, else the `tether` beside this binary (both
/// are built into one target directory).
fn tether_bin() -> anyhow::Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("TETHER_BIN") {
        return Ok(p.into());
    }
    let me = std::env::current_exe().context("cannot find the tether-bench executable")?;
    let beside = me.with_file_name("tether");
    anyhow::ensure!(
        beside.is_file(),
        "the fault rows drive the tether CLI, and there is none at {}: build it first \
         (`cargo build --release`) or set TETHER_BIN",
        beside.display()
    );
    Ok(beside)
}

fn tether(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    tether_out(dir, args).map(drop)
}

/// Runs the CLI; its standard output.
fn tether_out(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(tether_bin()?)
        .args(args)
        .arg("--state-dir")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("tether {}", args.join(" ")))?;
    anyhow::ensure!(
        out.status.success(),
        "tether {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Seconds for (isolate, heal, kill -9, failover with state) in one fresh cluster.
pub(super) fn detection_once(round: usize) -> anyhow::Result<(f64, f64, f64, f64)> {
    let dir = std::env::temp_dir().join(format!(
        "tether-bench-faults-{}-{round}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let result = measure(&dir);
    let _ = tether(&dir, &["down"]);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(dir: &Path) -> anyhow::Result<(f64, f64, f64, f64)> {
    tether(dir, &["up", "--detach"])?;

    let t0 = Instant::now();
    tether(dir, &["partition", "--isolate", "r2"])?;
    let wait_peer_lost = [
        "wait",
        "--state",
        "unreachable",
        "--node",
        "r1,l1",
        "--peer",
        "r2",
        "--timeout",
        "10s",
    ];
    tether(dir, &wait_peer_lost)?;
    tether(
        dir,
        &[
            "wait",
            "--state",
            "unreachable",
            "--node",
            "r2",
            "--timeout",
            "10s",
        ],
    )?;
    let isolate = t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    tether(dir, &["heal"])?;
    tether(dir, &["wait", "--state", "up", "--timeout", "10s"])?;
    let heal = t0.elapsed().as_secs_f64();

    let spawn = [
        "spawn",
        "counter",
        "fo",
        "--on",
        "r2",
        "--durability",
        "acked",
        "--via",
        "r1",
    ];
    tether(dir, &spawn)?;
    for _ in 0..5 {
        tether(dir, &["ask", "counter/fo", "\"inc\"", "--via", "r1"])?;
    }
    let rec = tether_cluster::net::statedir::NodeDir::new(dir.join("nodes").join("r2"))
        .read_record()
        .context("no record of r2")?;
    let t0 = Instant::now();
    // SAFETY: kill(2) on the pid of a node this run started (its record was just read)
    let rc = unsafe { libc::kill(rec.pid as i32, libc::SIGKILL) };
    anyhow::ensure!(
        rc == 0,
        "kill -9 {}: {}",
        rec.pid,
        std::io::Error::last_os_error()
    );
    tether(dir, &wait_peer_lost)?;
    let kill = t0.elapsed().as_secs_f64();
    let get = [
        "ask",
        "counter/fo",
        "\"get\"",
        "--via",
        "r1",
        "--timeout",
        "1s",
    ];
    loop {
        if let Ok(out) = tether_out(dir, &get) {
            anyhow::ensure!(out.trim() == "5", "the counter came back at {}", out.trim());
            break;
        }
        anyhow::ensure!(t0.elapsed().as_secs() < 30, "no failover within 30 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let failover = t0.elapsed().as_secs_f64();
    Ok((isolate, heal, kill, failover))
}
