//! Statistics and the report: a table for people, JSON for tools.

use serde_json::json;

/// One row of the report: tether's figure per repetition, and each anchor's.
pub(super) struct Metric {
    pub(super) name: &'static str,
    pub(super) unit: &'static str,
    pub(super) tether: Vec<f64>,
    pub(super) anchors: Vec<(&'static str, Vec<f64>)>,
    pub(super) goal: &'static str,
}

impl Metric {
    pub(super) fn new(
        name: &'static str,
        unit: &'static str,
        anchors: &[&'static str],
        goal: &'static str,
    ) -> Self {
        Self {
            name,
            unit,
            tether: Vec::new(),
            anchors: anchors.iter().map(|a| (*a, Vec::new())).collect(),
            goal,
        }
    }

    /// Records one repetition: tether's figure and the anchors' in the order given to `new`.
    pub(super) fn push(&mut self, tether: f64, anchors: &[f64]) {
        self.tether.push(tether);
        for (slot, v) in self.anchors.iter_mut().zip(anchors) {
            slot.1.push(*v);
        }
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
                json!({
                    "name": m.name, "unit": m.unit, "tether": t,
                    "min": min(&m.tether), "max": max(&m.tether),
                    "anchors": anchors, "ratios": ratios, "goal": m.goal,
                    "repetitions": m.tether.len(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "machine": machine(), "metrics": rows }))?
        );
        return Ok(());
    }
    let mut rows = vec![vec![
        "METRIC".to_owned(),
        "UNIT".into(),
        "TETHER (median [min..max])".into(),
        "ANCHOR".into(),
        "RATIO".into(),
        "GOAL".into(),
    ]];
    for m in metrics {
        let t = median(&m.tether);
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
                m.goal.to_owned(),
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
                if first {
                    m.goal.to_owned()
                } else {
                    String::new()
                },
            ]);
        }
    }
    super::super::common::print_table(&rows);
    Ok(())
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
    fn a_metric_keeps_anchor_samples_in_order() {
        let mut m = Metric::new("x", "u", &["a", "b"], "g");
        m.push(1.0, &[2.0, 3.0]);
        m.push(4.0, &[5.0, 6.0]);
        assert_eq!(m.tether, vec![1.0, 4.0]);
        assert_eq!(m.anchors[0].1, vec![2.0, 5.0]);
        assert_eq!(m.anchors[1].1, vec![3.0, 6.0]);
    }
}
