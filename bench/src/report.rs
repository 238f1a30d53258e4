//! Statistics and the report: a table for people, JSON for tools.

use serde_json::json;

/// Which way a goal points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// tether's median is at least the target (throughputs, rates).
    AtLeast,
    /// tether's median is at most the target (latencies, bytes).
    AtMost,
}

/// A goal the bench evaluates: tether's median `op` `factor` times an anchor's median (or
/// `factor` itself when there is no anchor: an absolute bound in the row's unit).
#[derive(Debug, Clone, Copy)]
pub(super) struct Goal {
    pub(super) op: Op,
    pub(super) factor: f64,
    pub(super) anchor: Option<&'static str>,
}

impl Goal {
    /// At least `factor` times `anchor`.
    pub(super) fn at_least(factor: f64, anchor: &'static str) -> Self {
        Self {
            op: Op::AtLeast,
            factor,
            anchor: Some(anchor),
        }
    }

    /// At most `factor` times `anchor`.
    pub(super) fn at_most(factor: f64, anchor: &'static str) -> Self {
        Self {
            op: Op::AtMost,
            factor,
            anchor: Some(anchor),
        }
    }

    /// At most `bound`, in the row's unit.
    pub(super) fn within(bound: f64) -> Self {
        Self {
            op: Op::AtMost,
            factor: bound,
            anchor: None,
        }
    }

    fn symbol(&self) -> &'static str {
        match self.op {
            Op::AtLeast => ">=",
            Op::AtMost => "<=",
        }
    }

    /// `>= 0.9x bare_ractor`, `<= 2 s`.
    fn describe(&self, unit: &str) -> String {
        match self.anchor {
            Some(a) => format!("{} {}x {a}", self.symbol(), self.factor),
            None => format!("{} {} {unit}", self.symbol(), self.factor),
        }
    }

    /// Whether the row's medians meet it; `None` when a figure is missing.
    fn met(&self, m: &Metric) -> Option<bool> {
        let t = median(&m.tether);
        let target = match self.anchor {
            Some(a) => median(&m.anchors.iter().find(|(n, _)| *n == a)?.1) * self.factor,
            None => self.factor,
        };
        if !(t.is_finite() && target.is_finite()) {
            return None;
        }
        Some(match self.op {
            Op::AtLeast => t >= target,
            Op::AtMost => t <= target,
        })
    }
}

/// One row of the report: tether's figure per repetition, each anchor's, and the goals (none
/// for a row kept for information).
pub(super) struct Metric {
    pub(super) name: &'static str,
    pub(super) unit: &'static str,
    pub(super) tether: Vec<f64>,
    pub(super) anchors: Vec<(&'static str, Vec<f64>)>,
    pub(super) goals: Vec<Goal>,
    /// What the row measures, in a few words.
    pub(super) note: &'static str,
}

impl Metric {
    pub(super) fn new(
        name: &'static str,
        unit: &'static str,
        anchors: &[&'static str],
        goals: &[Goal],
        note: &'static str,
    ) -> Self {
        for g in goals {
            debug_assert!(
                g.anchor.is_none_or(|a| anchors.contains(&a)),
                "{name}: a goal against an anchor the row does not measure"
            );
        }
        Self {
            name,
            unit,
            tether: Vec::new(),
            anchors: anchors.iter().map(|a| (*a, Vec::new())).collect(),
            goals: goals.to_vec(),
            note,
        }
    }

    /// Records one repetition: tether's figure and the anchors' in the order given to `new`.
    pub(super) fn push(&mut self, tether: f64, anchors: &[f64]) {
        self.tether.push(tether);
        for (slot, v) in self.anchors.iter_mut().zip(anchors) {
            slot.1.push(*v);
        }
    }

    /// Whether every goal is met: `None` for a row without goals (or with a missing figure).
    pub(super) fn met(&self) -> Option<bool> {
        if self.goals.is_empty() {
            return None;
        }
        self.goals
            .iter()
            .map(|g| g.met(self))
            .try_fold(true, |all, m| m.map(|m| all && m))
    }

    fn goal_text(&self) -> String {
        self.goals
            .iter()
            .map(|g| g.describe(self.unit))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub(super) fn median(v: &[f64]) -> f64 {
    percentile(v, 0.5)
}

/// The `p` quantile (0..=1) by linear interpolation; NaN for no samples.
pub(super) fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let pos = (s.len() as f64 - 1.0) * p.clamp(0.0, 1.0);
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// The machine, and the async runtime's worker threads per process (every process of a run
/// has as many: the children inherit `TOKIO_WORKER_THREADS`).
pub(super) fn machine() -> String {
    let workers = tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_workers().to_string())
        .unwrap_or_else(|_| "?".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "? GiB".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    format!(
        "{cores} cores, {mem}, {cpu}, {} {}, runtime workers per process: {workers}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

pub(super) fn report(metrics: &[Metric], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        report_json(metrics)
    } else {
        report_table(metrics);
        Ok(())
    }
}

fn report_json(metrics: &[Metric]) -> anyhow::Result<()> {
    let rows: Vec<serde_json::Value> = metrics
        .iter()
        .map(|m| {
            let t = median(&m.tether);
            let anchors: serde_json::Map<String, serde_json::Value> = m
                .anchors
                .iter()
                .map(|(n, v)| ((*n).to_owned(), json!(median(v))))
                .collect();
            let ratios: serde_json::Map<String, serde_json::Value> = m
                .anchors
                .iter()
                .map(|(n, v)| ((*n).to_owned(), json!(t / median(v))))
                .collect();
            let goals: Vec<serde_json::Value> = m
                .goals
                .iter()
                .map(|g| {
                    json!({
                        "op": g.symbol(), "factor": g.factor, "anchor": g.anchor,
                        "text": g.describe(m.unit), "met": g.met(m),
                    })
                })
                .collect();
            json!({
                "name": m.name, "unit": m.unit, "tether": t,
                "min": min(&m.tether), "max": max(&m.tether),
                "anchors": anchors, "ratios": ratios,
                "goal": if goals.is_empty() { serde_json::Value::Null } else { json!(goals) },
                "met": m.met(), "note": m.note,
                "repetitions": m.tether.len(),
            })
        })
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "machine": machine(), "metrics": rows, "misses": misses(metrics),
        }))?
    );
    Ok(())
}

fn report_table(metrics: &[Metric]) {
    let mut rows = vec![vec![
        "METRIC".to_owned(),
        "UNIT".into(),
        "TETHER (median [min..max])".into(),
        "ANCHOR".into(),
        "RATIO".into(),
        "GOAL".into(),
        "MET".into(),
        "WHAT".into(),
    ]];
    for m in metrics {
        let t = median(&m.tether);
        let met = match m.met() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        let goal = if m.goals.is_empty() {
            "-".to_owned()
        } else {
            m.goal_text()
        };
        let figure = format!(
            "{} [{}..{}]",
            fmt(t),
            fmt(min(&m.tether)),
            fmt(max(&m.tether))
        );
        if m.anchors.is_empty() {
            rows.push(vec![
                m.name.to_owned(),
                m.unit.to_owned(),
                figure.clone(),
                "-".into(),
                "-".into(),
                goal.clone(),
                met.into(),
                m.note.into(),
            ]);
        }
        // one line per anchor; the metric's own cells only on the first
        for (i, (n, v)) in m.anchors.iter().enumerate() {
            let first = i == 0;
            rows.push(vec![
                if first {
                    m.name.to_owned()
                } else {
                    String::new()
                },
                if first {
                    m.unit.to_owned()
                } else {
                    String::new()
                },
                if first { figure.clone() } else { String::new() },
                format!("{n} {}", fmt(median(v))),
                format!("{:.2}x", t / median(v)),
                if first { goal.clone() } else { String::new() },
                if first { met.into() } else { String::new() },
                if first { m.note.into() } else { String::new() },
            ]);
        }
    }
    tether::table::print(&rows);
    let missed = misses(metrics);
    if missed.is_empty() {
        println!("\nevery goal met");
    } else {
        println!("\nmissed: {}", missed.join(", "));
    }
}

/// The rows whose goals are not met.
fn misses(metrics: &[Metric]) -> Vec<&'static str> {
    metrics
        .iter()
        .filter(|m| m.met() == Some(false))
        .map(|m| m.name)
        .collect()
}

pub(super) fn fmt(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_and_median_is_the_middle() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.0), 1.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 1.0), 5.0);
        assert!(
            (percentile(&(1..=100).map(f64::from).collect::<Vec<_>>(), 0.99) - 99.01).abs() < 1e-9
        );
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn goals_are_evaluated_on_medians() {
        let mut m = Metric::new(
            "tell",
            "msg/s",
            &["a", "b"],
            &[Goal::at_least(0.9, "a"), Goal::at_most(2.0, "b")],
            "",
        );
        m.push(95.0, &[100.0, 50.0]);
        m.push(90.0, &[100.0, 50.0]);
        m.push(1.0, &[100.0, 50.0]);
        // median 90 >= 0.9 x 100, and 90 <= 2 x 50
        assert_eq!(m.met(), Some(true));
        m.push(80.0, &[100.0, 50.0]);
        m.push(80.0, &[100.0, 50.0]);
        assert_eq!(m.met(), Some(false), "median 80 < 90");
        assert_eq!(misses(&[m]), vec!["tell"]);
        let mut d = Metric::new("detect", "s", &[], &[Goal::within(2.0)], "");
        d.push(1.5, &[]);
        assert_eq!(d.met(), Some(true));
        let info = Metric::new("info", "s", &[], &[], "");
        assert_eq!(
            info.met(),
            None,
            "a row without goals is neither met nor missed"
        );
    }

    #[test]
    fn a_metric_keeps_anchor_samples_in_order() {
        let mut m = Metric::new("x", "u", &["a", "b"], &[], "g");
        m.push(1.0, &[2.0, 3.0]);
        m.push(4.0, &[5.0, 6.0]);
        assert_eq!(m.tether, vec![1.0, 4.0]);
        assert_eq!(m.anchors[0].1, vec![2.0, 5.0]);
        assert_eq!(m.anchors[1].1, vec![3.0, 6.0]);
    }
}
