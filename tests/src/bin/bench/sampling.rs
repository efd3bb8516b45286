//! Interleaved sampling: every variant of a phase takes its `i`-th sample before any takes
//! its `i+1`-th (starting from a rotating position), so a burst of noise on the machine
//! lands on all of them alike and the ratios between them hold.

use std::time::{Duration, Instant};

use crate::report::Report;

/// One timed call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// The time to count.
    pub time: Duration,
    /// Backend round trips during the timed call, when counted.
    pub trips: Option<u64>,
    /// A count the variant wants reported (`<name>_<extra label>`), such as the entries a
    /// write invalidated.
    pub extra: Option<u64>,
    /// Whether the call answered as the variant expects (a hit for a hit, a miss for a
    /// miss); the ones that did not are reported in a note.
    pub expected: bool,
}

impl Sample {
    /// A sample of `time`, as expected, nothing counted.
    pub fn of(time: Duration) -> Self {
        Sample {
            time,
            trips: None,
            extra: None,
            expected: true,
        }
    }
}

/// Times `f`, keeping its result from being optimised away.
pub fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let out = std::hint::black_box(f());
    (start.elapsed(), out)
}

/// How a variant's times are named: read figures get `_p50` and `_p99`; cost figures are
/// the bare name (the median) and `_p99`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `<name>_p50`, `<name>_p99`.
    Read,
    /// `<name>` (median), `<name>_p99`.
    Cost,
}

/// A sampling function: sample number in, one sample (or why it failed) out.
pub type SampleFn<'a> = Box<dyn FnMut(usize) -> Result<Sample, String> + 'a>;

/// One measured figure of a phase.
pub struct Variant<'a> {
    name: String,
    samples: usize,
    warmup: usize,
    naming: Naming,
    extra_label: &'static str,
    run: SampleFn<'a>,
    results: Vec<Sample>,
    failed: Option<String>,
}

impl<'a> Variant<'a> {
    /// A variant taking `samples` samples after `warmup` discarded calls.
    pub fn new(
        name: impl Into<String>,
        naming: Naming,
        samples: usize,
        warmup: usize,
        run: impl FnMut(usize) -> Result<Sample, String> + 'a,
    ) -> Self {
        Variant {
            name: name.into(),
            samples: samples.max(1),
            warmup,
            naming,
            extra_label: "extra",
            run: Box::new(run),
            results: Vec::new(),
            failed: None,
        }
    }

    /// Names the count a sample's `extra` carries (`<name>_<label>`).
    pub fn extra_label(mut self, label: &'static str) -> Self {
        self.extra_label = label;
        self
    }
}

/// The value at quantile `q` (nearest rank) of sorted `v`.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> T {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Microseconds.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Runs `variants` interleaved (warm-ups first, in the same interleaved order), then reports
/// each one's median and p99 time, median round trips and median extra count.
pub fn run_interleaved(report: &mut Report, mut variants: Vec<Variant<'_>>) {
    let warm = variants.iter().map(|v| v.warmup).max().unwrap_or(0);
    for round in 0..warm {
        for v in variants.iter_mut().filter(|v| round < v.warmup) {
            if v.failed.is_none() {
                if let Err(e) = (v.run)(round) {
                    v.failed = Some(e);
                }
            }
        }
    }
    let rounds = variants.iter().map(|v| v.samples).max().unwrap_or(0);
    let n = variants.len().max(1);
    for round in 0..rounds {
        for k in 0..variants.len() {
            let v = &mut variants[(k + round) % n];
            if round >= v.samples || v.failed.is_some() {
                continue;
            }
            match (v.run)(round + v.warmup) {
                Ok(s) => v.results.push(s),
                Err(e) => v.failed = Some(e),
            }
        }
    }
    for v in variants {
        summarise(report, v);
    }
}

fn summarise(report: &mut Report, v: Variant<'_>) {
    if let Some(e) = v.failed {
        report.skip(&v.name, format!("failed: {e}"));
        return;
    }
    let mut times: Vec<Duration> = v.results.iter().map(|s| s.time).collect();
    times.sort();
    let (p50, p99) = (us(quantile(&times, 0.5)), us(quantile(&times, 0.99)));
    match v.naming {
        Naming::Read => {
            report.metric(format!("{}_p50", v.name), p50, "us");
            report.metric(format!("{}_p99", v.name), p99, "us");
        }
        Naming::Cost => {
            report.metric(&v.name, p50, "us");
            report.metric(format!("{}_p99", v.name), p99, "us");
        }
    }
    let mut trips: Vec<u64> = v.results.iter().filter_map(|s| s.trips).collect();
    if !trips.is_empty() {
        trips.sort_unstable();
        report.metric(
            format!("{}_round_trips", v.name),
            quantile(&trips, 0.5) as f64,
            "trips",
        );
        let (lo, hi) = (trips[0], trips[trips.len() - 1]);
        if lo != hi {
            report.note(format!(
                "{}: round trips ranged {lo}..{hi} over {} samples",
                v.name,
                trips.len()
            ));
        }
    }
    let mut extra: Vec<u64> = v.results.iter().filter_map(|s| s.extra).collect();
    if !extra.is_empty() {
        extra.sort_unstable();
        report.metric(
            format!("{}_{}", v.name, v.extra_label),
            quantile(&extra, 0.5) as f64,
            "count",
        );
    }
    let unexpected = v.results.iter().filter(|s| !s.expected).count();
    if unexpected > 0 {
        report.note(format!(
            "{}: {unexpected} of {} samples did not answer as expected (a miss timed as a hit, or the reverse)",
            v.name,
            v.results.len()
        ));
    }
}
