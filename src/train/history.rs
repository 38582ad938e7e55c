//! One loss-history format for every trained method: a CSV (header `<x>,<name>,…`, one row per
//! epoch or step, empty cells where a column has no value) and a PNG of the same curves.

use std::path::Path;

use crate::error::SpxError;
use crate::io::{atomic::write_atomic, plot};

/// Named curves over a shared x axis (epoch or step).
#[derive(Clone, Debug, Default)]
pub struct History {
    pub x_name: String,
    pub x: Vec<f64>,
    /// (name, one value per x; NaN = no value at that x).
    pub columns: Vec<(String, Vec<f64>)>,
}

impl History {
    pub fn new(x_name: &str) -> Self {
        History {
            x_name: x_name.to_string(),
            ..Default::default()
        }
    }

    /// Add a curve; `values` must have one entry per x.
    pub fn column(mut self, name: &str, values: Vec<f64>) -> Self {
        self.columns.push((name.to_string(), values));
        self
    }

    /// Write the CSV (atomically).
    pub fn write_csv(&self, path: &Path) -> Result<(), SpxError> {
        let mut w = csv::Writer::from_writer(Vec::new());
        let io = |e: csv::Error| SpxError::file(path, e);
        let mut header = vec![self.x_name.clone()];
        header.extend(self.columns.iter().map(|(n, _)| n.clone()));
        w.write_record(&header).map_err(io)?;
        for (i, x) in self.x.iter().enumerate() {
            let mut row = vec![fmt(*x)];
            for (_, c) in &self.columns {
                row.push(c.get(i).map(|v| fmt(*v)).unwrap_or_default());
            }
            w.write_record(&row).map_err(io)?;
        }
        let bytes = w
            .into_inner()
            .map_err(|e| SpxError::file(path, e.to_string()))?;
        write_atomic(path, |f| std::io::Write::write_all(f, &bytes))
    }

    /// Plot every column against x (log y when every finite value is positive).
    pub fn write_png(&self, path: &Path, title: &str) -> Result<(), SpxError> {
        let mut lp = plot::LinePlot::new(title, &self.x_name, "loss");
        let mut all_positive = true;
        for (name, c) in &self.columns {
            let (xs, ys): (Vec<f64>, Vec<f64>) = self
                .x
                .iter()
                .zip(c)
                .filter(|(_, y)| y.is_finite())
                .map(|(x, y)| (*x, *y))
                .unzip();
            all_positive &= ys.iter().all(|&y| y > 0.0);
            if !xs.is_empty() {
                lp.series.push(plot::Series::line(name, xs, ys));
            }
        }
        lp.log_y = all_positive;
        plot::line_plot(path, &lp)
    }
}

/// Shortest text that reads back to the same f64 (empty for NaN).
fn fmt(v: f64) -> String {
    if v.is_nan() {
        String::new()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.csv");
        let mut h = History::new("epoch")
            .column("train", vec![1.5, 0.25])
            .column("val", vec![f64::NAN, 0.1]);
        h.x = vec![1.0, 2.0];
        h.write_csv(&p).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "epoch,train,val\n1,1.5,\n2,0.25,0.1\n"
        );
        h.write_png(&dir.path().join("h.png"), "t").unwrap();
        assert!(dir.path().join("h.png").metadata().unwrap().len() > 1000);
    }
}
