//! The benchmark's table: printed, and written as JSON for scripts and for
//! comparing runs.

use std::path::PathBuf;

/// One measured figure.
pub struct Row {
    pub what: String,
    pub value: f64,
    pub unit: &'static str,
    /// The value over the native ceiling, for throughput rows.
    pub ratio: Option<f64>,
}

/// Every row of one run.
#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    /// Adds a row without a ratio.
    pub fn add(&mut self, what: impl Into<String>, value: f64, unit: &'static str) {
        self.rows.push(Row { what: what.into(), value, unit, ratio: None });
    }

    /// Adds a throughput row with its ratio to `native` (events/s).
    pub fn rate(&mut self, what: impl Into<String>, value: f64, native: Option<f64>) {
        let ratio = native.map(|n| value / n);
        self.rows.push(Row { what: what.into(), value, unit: "events/s", ratio });
    }

    /// Prints the table.
    pub fn print(&self, title: &str) {
        println!("\n{title}");
        println!("{:<66} {:>12} {:<9} {:>6}", "what", "value", "unit", "ratio");
        for r in &self.rows {
            let ratio = r.ratio.map(|x| format!("{x:.2}")).unwrap_or_default();
            let value = match r.value {
                v if v >= 100.0 => format!("{v:.0}"),
                v if r.unit == "ratio" => format!("{v:.2}"),
                v => format!("{v:.1}"),
            };
            println!("{:<66} {:>12} {:<9} {:>6}", r.what, value, r.unit, ratio);
        }
    }

    /// Writes the rows as JSON to `SLUICE_BENCH_OUT` or
    /// `target/bench/throughput.json`; returns the path.
    pub fn write(&self, meta: serde_json::Value) -> PathBuf {
        let path = std::env::var_os("SLUICE_BENCH_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/throughput.json"));
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|r| serde_json::json!({"what": r.what, "value": r.value, "unit": r.unit, "ratio": r.ratio}))
            .collect();
        let doc = serde_json::json!({"meta": meta, "rows": rows});
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        path
    }
}
