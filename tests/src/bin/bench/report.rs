//! What a run prints, and the JSON it can write: `metric <name> <value> <unit>` lines as
//! figures come in, `skipped <name>: <reason>` for figures whose server (or feature) is
//! missing, then `ratio <name> <value>` lines at the end.

use std::collections::BTreeMap;

/// A run's figures, in the order they were printed.
#[derive(Debug, Default)]
pub struct Report {
    metrics: Vec<(String, f64, String)>,
    ratios: Vec<(String, f64)>,
    skipped: Vec<(String, String)>,
    notes: Vec<String>,
    /// Why a part of the run is missing (`postgres`, `memcached`, `redis`), for the skip
    /// lines of the ratios that need it.
    missing: BTreeMap<&'static str, String>,
    run: BTreeMap<String, serde_json::Value>,
}

/// A value printed with the precision its size deserves.
fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if v.fract() == 0.0 && a < 1e15 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

impl Report {
    /// Records and prints one figure.
    pub fn metric(&mut self, name: impl Into<String>, value: f64, unit: &str) {
        let name = name.into();
        println!("metric {name} {} {unit}", fmt_value(value));
        self.metrics.push((name, value, unit.to_string()));
    }

    /// Records and prints that a figure was not measured, and why.
    pub fn skip(&mut self, name: impl Into<String>, reason: impl Into<String>) {
        let (name, reason) = (name.into(), reason.into());
        println!("skipped {name}: {reason}");
        self.skipped.push((name, reason));
    }

    /// Records and prints a remark about a figure (an unexpected outcome, say).
    pub fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        println!("note {text}");
        self.notes.push(text);
    }

    /// Marks a part of the run (`postgres`, `memcached`, `redis`) as missing, printing the
    /// skip line of its figures once.
    pub fn missing(&mut self, part: &'static str, reason: impl Into<String>) {
        let reason = reason.into();
        self.skip(format!("{part} figures"), reason.clone());
        self.missing.insert(part, reason);
    }

    /// Whether a part of the run is available.
    pub fn has(&self, part: &str) -> bool {
        !self.missing.contains_key(part)
    }

    /// A run parameter, for the JSON output.
    pub fn param(&mut self, name: &str, value: impl Into<serde_json::Value>) {
        self.run.insert(name.to_string(), value.into());
    }

    /// The value of a figure recorded earlier.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .rev()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| *v)
    }

    /// Records a ratio (printed by [`print_ratios`](Self::print_ratios)).
    pub fn ratio(&mut self, name: impl Into<String>, value: f64) {
        self.ratios.push((name.into(), value));
    }

    /// Records `num / den` under `name`, or the skip line saying which part of the run (one
    /// of `needs`) or which figure is missing.
    pub fn ratio_of(&mut self, name: &str, num: &str, den: &str, needs: &[&str]) {
        if let Some(part) = needs.iter().find(|p| !self.has(p)) {
            let reason = format!("needs {part} ({})", self.missing[*part]);
            self.skip(name, reason);
            return;
        }
        match (self.get(num), self.get(den)) {
            (Some(n), Some(d)) if d > 0.0 => self.ratio(name, n / d),
            (n, _) => {
                let absent = if n.is_none() { num } else { den };
                self.skip(name, format!("figure {absent} was not measured"));
            }
        }
    }

    /// Prints every ratio, after the metrics.
    pub fn print_ratios(&self) {
        for (name, value) in &self.ratios {
            println!("ratio {name} {}", fmt_value(*value));
        }
    }

    /// Writes every figure as one JSON object: `{"run": {..}, "metrics": {name: {"value",
    /// "unit"}}, "ratios": {name: value}, "skipped": {name: reason}, "notes": [..]}`.
    pub fn write_json(&self, path: &str) -> std::io::Result<()> {
        let metrics: serde_json::Map<String, serde_json::Value> = self
            .metrics
            .iter()
            .map(|(n, v, u)| (n.clone(), serde_json::json!({ "value": v, "unit": u })))
            .collect();
        let ratios: serde_json::Map<String, serde_json::Value> = self
            .ratios
            .iter()
            .map(|(n, v)| (n.clone(), serde_json::json!(v)))
            .collect();
        let skipped: serde_json::Map<String, serde_json::Value> = self
            .skipped
            .iter()
            .map(|(n, r)| (n.clone(), serde_json::json!(r)))
            .collect();
        let doc = serde_json::json!({
            "run": self.run,
            "metrics": metrics,
            "ratios": ratios,
            "skipped": skipped,
            "notes": self.notes,
        });
        let text = serde_json::to_string_pretty(&doc).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n")
    }
}
