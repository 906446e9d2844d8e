//! Several seeds of `bench stragglers`, summarised: each figure as its
//! median over seeds with the range, and a verdict against the
//! equal-resources baseline that is called only when the ranges do not
//! overlap. One run's p99.9 swings several-fold between seeds; a claim
//! rests on the spread, not on one draw.

use serde::Serialize;

use super::stragglers::{Report, Row};

/// Fewest seeds for a verdict.
pub const MIN_SEEDS: usize = 3;
/// Fewest latencies beyond p99.9 for it to be more than a few outliers:
/// 20 needs 20,000 answers per run.
pub const MIN_BEYOND_P999: u64 = 20;
/// Most queries a run may fail (time out, be refused), in %, for its tail
/// to count: percentiles are of answers, so past 0.1% of failures the
/// p99.9 of every query sent is a failure, whatever the answers' says.
pub const MAX_ERRORS_PCT: f64 = 0.1;

/// A figure over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// None for no values.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }

    fn overlaps(&self, other: &Spread) -> bool {
        self.min <= other.max && other.min <= self.max
    }
}

/// How a configuration's tail gap (p99.9 − p50) compares with
/// equal-resources' over the seeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Smaller in every seed than the baseline's smallest.
    Win,
    /// Larger in every seed than the baseline's largest.
    Loss,
    /// The ranges overlap: no call.
    Overlap,
    /// More than [`MAX_ERRORS_PCT`] of its queries failed in some seed:
    /// its p99.9 is not one of all queries, so no call.
    Errors,
    /// Fewer than [`MIN_SEEDS`] seeds: no call.
    TooFewSeeds,
    /// The baseline itself, or no baseline in the run.
    NotCompared,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Win => "win",
            Verdict::Loss => "loss",
            Verdict::Overlap => "overlap: no call",
            Verdict::Errors => "errors: no call",
            Verdict::TooFewSeeds => "too few seeds",
            Verdict::NotCompared => "",
        }
    }
}

/// One configuration at one load, over every seed it ran with.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub name: String,
    pub k: usize,
    /// Its share of capacity (`--loads`) or its rate: [`Row::level`].
    pub level: f64,
    /// Offered requests per second (the median over seeds).
    pub rate: f64,
    pub seeds: usize,
    pub p50_us: Spread,
    pub p999_us: Spread,
    pub tail_gap_us: Spread,
    /// Tail gap over the baseline's, seed by seed.
    pub gap_vs_baseline: Option<Spread>,
    /// Median over the baseline's, seed by seed.
    pub p50_vs_baseline: Option<Spread>,
    pub verdict: Verdict,
    /// Queries that failed (timed out, refused, errors), % of those sent.
    pub errors_pct: Spread,
    /// Fewest latencies beyond p99.9 in any one seed's run.
    pub beyond_p999: u64,
}

/// Every (configuration, load) of `report`, in the order they ran.
pub fn summarise(report: &Report) -> Vec<Summary> {
    let mut keys: Vec<(&str, f64)> = Vec::new();
    for row in &report.rows {
        let key = (row.config.name.as_str(), row.level());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .filter_map(|(name, level)| summary(report, name, level))
        .collect()
}

fn summary(report: &Report, name: &str, level: f64) -> Option<Summary> {
    let rows: Vec<&Row> = report
        .rows
        .iter()
        .filter(|r| r.config.name == name && r.level() == level)
        .collect();
    let first = rows.first()?;
    let k = first.config.k;
    let baseline = |seed: u64| {
        report.rows.iter().find(|b| {
            b.config.is_baseline() && b.config.k == k && b.level() == level && b.seed == seed
        })
    };
    let ratios = |f: fn(&Row) -> f64| {
        Spread::of(
            rows.iter()
                .filter_map(|r| baseline(r.seed).map(|b| f(r) / f(b).max(1.0))),
        )
    };
    let gap = |r: &Row| r.tail_gap_us as f64;
    let p50 = |r: &Row| r.latency.p50_us as f64;
    let tail_gap_us = Spread::of(rows.iter().map(|r| gap(r)))?;
    let base_gap = Spread::of(rows.iter().filter_map(|r| baseline(r.seed)).map(gap));
    let errors_pct = Spread::of(
        rows.iter()
            .map(|r| 100.0 * r.errors as f64 / r.sent.max(1) as f64),
    )?;
    let verdict = match base_gap {
        _ if first.config.is_baseline() => Verdict::NotCompared,
        None => Verdict::NotCompared,
        Some(_) if rows.len() < MIN_SEEDS => Verdict::TooFewSeeds,
        Some(_) if errors_pct.max > MAX_ERRORS_PCT => Verdict::Errors,
        Some(b) if tail_gap_us.overlaps(&b) => Verdict::Overlap,
        Some(b) if tail_gap_us.max < b.min => Verdict::Win,
        Some(_) => Verdict::Loss,
    };
    Some(Summary {
        name: name.to_owned(),
        k,
        level,
        rate: Spread::of(rows.iter().map(|r| r.rate))?.median,
        seeds: rows.len(),
        p50_us: Spread::of(rows.iter().map(|r| p50(r)))?,
        p999_us: Spread::of(rows.iter().map(|r| r.latency.p999_us as f64))?,
        tail_gap_us,
        gap_vs_baseline: ratios(gap).filter(|_| !first.config.is_baseline()),
        p50_vs_baseline: ratios(p50).filter(|_| !first.config.is_baseline()),
        verdict,
        errors_pct,
        beyond_p999: rows
            .iter()
            .map(|r| r.latency.count / 1000)
            .min()
            .unwrap_or(0),
    })
}

/// The summaries as markdown tables, one per load: medians over seeds
/// with their ranges.
pub fn markdown(report: &Report, summaries: &[Summary]) -> String {
    let ms = |s: &Spread| {
        format!(
            "{:.1} ({:.1}–{:.1})",
            s.median / 1e3,
            s.min / 1e3,
            s.max / 1e3
        )
    };
    let ratio = |s: &Option<Spread>| {
        s.map(|s| format!("{:.2}× ({:.2}–{:.2})", s.median, s.min, s.max))
            .unwrap_or_default()
    };
    let mut out = String::new();
    for &level in report.levels() {
        out.push_str(&format!(
            "\n{}, median over seeds (min–max):\n\n\
             | configuration | seeds | offered req/s | p50 ms | p99.9 ms | p99.9 − p50 ms | gap vs equal-resources | p50 vs equal-resources | errors % | verdict | answers beyond p99.9 |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |\n",
            report.level_label(level)
        ));
        for s in summaries.iter().filter(|s| s.level == level) {
            let beyond = if s.beyond_p999 < MIN_BEYOND_P999 {
                format!("{} (too few)", s.beyond_p999)
            } else {
                s.beyond_p999.to_string()
            };
            let e = &s.errors_pct;
            let errors = format!("{:.2} ({:.2}–{:.2})", e.median, e.min, e.max);
            out.push_str(&format!(
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {beyond} |\n",
                s.name,
                s.seeds,
                s.rate,
                ms(&s.p50_us),
                ms(&s.p999_us),
                ms(&s.tail_gap_us),
                ratio(&s.gap_vs_baseline),
                ratio(&s.p50_vs_baseline),
                errors,
                s.verdict.as_str(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::latency::Summary as Latency;
    use crate::bench::stragglers::{Row, SlowMode, configs};
    use crate::worker::ServiceTimeArgs;

    fn row(name: &str, seed: u64, p50: u64, p999: u64, count: u64) -> Row {
        let config = configs(&[2], false)
            .into_iter()
            .find(|c| c.name == name)
            .unwrap();
        Row {
            config,
            rate: 100.0,
            load: None,
            seed,
            latency: Latency {
                count,
                p50_us: p50,
                p999_us: p999,
                ..Latency::default()
            },
            tail: Vec::new(),
            throughput_rps: 100.0,
            sent: count,
            errors: 0,
            reconstructed_share: 0.0,
            rebuilt_while_idle_share: None,
            agreement: None,
            tail_gap_us: p999 - p50,
        }
    }

    fn report(rows: Vec<Row>) -> Report {
        Report {
            rates: vec![100.0],
            loads: Vec::new(),
            capacity_rps: Default::default(),
            ks: vec![2],
            seconds: 10.0,
            mode: SlowMode::Delay,
            slow_probability: 0.05,
            slow_delay_ms: 50,
            window_ms: 500,
            seeds: vec![0, 1, 2],
            machine: "test".into(),
            workers: "the model's own compute".into(),
            service_time: ServiceTimeArgs::default(),
            worker_max_batch_size: 64,
            rows,
        }
    }

    const CODED: &str = "coded k=2 eager";
    const EQUAL: &str = "equal-resources, 3 workers";

    #[test]
    fn spreads_take_the_median_and_the_range() {
        assert_eq!(Spread::of([]), None);
        let s = Spread::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of([4.0, 1.0]).unwrap().median, 2.5);
    }

    #[test]
    fn a_win_needs_three_seeds_and_ranges_apart() {
        // Coded's gaps 1–3 ms against equal-resources' 10–40 ms: a win.
        let mut rows = Vec::new();
        for (seed, (c, e)) in [(1_000, 10_000), (2_000, 40_000), (3_000, 20_000)]
            .into_iter()
            .enumerate()
        {
            rows.push(row(CODED, seed as u64, 1_000, 1_000 + c, 25_000));
            rows.push(row(EQUAL, seed as u64, 1_100, 1_100 + e, 21_000));
        }
        let s = summarise(&report(rows.clone()));
        assert_eq!(s.len(), 2);
        let coded = &s[0];
        assert_eq!((coded.name.as_str(), coded.seeds), (CODED, 3));
        assert_eq!(coded.verdict, Verdict::Win);
        assert_eq!(coded.tail_gap_us.median, 2_000.0);
        // Seed by seed: 1/10, 2/40, 3/20.
        let g = coded.gap_vs_baseline.unwrap();
        assert_eq!((g.min, g.median, g.max), (0.05, 0.1, 0.15));
        assert_eq!(coded.beyond_p999, 25);
        assert_eq!(s[1].verdict, Verdict::NotCompared);
        assert_eq!(s[1].gap_vs_baseline, None);

        // One seed failing 0.2% of its queries (timed out or refused):
        // its answers' p99.9 is not its queries', so no call.
        let mut failing = rows.clone();
        failing[2].errors = failing[2].sent / 500;
        let s = summarise(&report(failing));
        assert_eq!(s[0].verdict, Verdict::Errors);
        assert_eq!(s[0].errors_pct.max, 0.2);
        assert_eq!(s[0].errors_pct.min, 0.0);
        // At 0.1% it still counts.
        let mut few = rows.clone();
        few[2].errors = few[2].sent / 1000;
        assert_eq!(summarise(&report(few))[0].verdict, Verdict::Win);
        // One seed where coded's gap reaches the baseline's: no call.
        rows[4] = row(CODED, 2, 1_000, 1_000 + 10_000, 25_000);
        assert_eq!(
            summarise(&report(rows.clone()))[0].verdict,
            Verdict::Overlap
        );
        // Coded worse in every seed: a loss.
        let worse: Vec<Row> = rows
            .iter()
            .map(|r| match r.config.name.as_str() {
                CODED => row(CODED, r.seed, 1_000, 101_000, 25_000),
                _ => r.clone(),
            })
            .collect();
        assert_eq!(summarise(&report(worse))[0].verdict, Verdict::Loss);
        // Two seeds: no call, however far apart.
        let two: Vec<Row> = rows.into_iter().filter(|r| r.seed < 2).collect();
        assert_eq!(summarise(&report(two))[0].verdict, Verdict::TooFewSeeds);
    }

    #[test]
    fn the_table_names_the_spread_and_too_thin_tails() {
        let rows = (0..3)
            .flat_map(|seed| {
                [
                    row(CODED, seed, 2_000, 4_000 + seed * 1_000, 5_000),
                    row(EQUAL, seed, 2_000, 52_000, 30_000),
                ]
            })
            .collect();
        let report = report(rows);
        let table = markdown(&report, &summarise(&report));
        assert!(table.contains("100 req/s, median over seeds"), "{table}");
        assert!(
            table.contains(
                "| coded k=2 eager | 3 | 100 | 2.0 (2.0–2.0) | 5.0 (4.0–6.0) | 3.0 (2.0–4.0) | 0.06× (0.04–0.08) | 1.00× (1.00–1.00) | 0.00 (0.00–0.00) | win | 5 (too few) |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| equal-resources, 3 workers | 3 |"),
            "{table}"
        );
    }
}
