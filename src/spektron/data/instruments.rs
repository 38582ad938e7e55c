//! Two-instrument calibration data for `spektron baselines`: the Eigenvector corn file
//! (`<inst>spec` DataSets + `propvals`), the IDRC-2002 tablet file (`calibrate_/validate_/test_`
//! `<inst>` + `_Y`, concatenated in that order) or a directory with the corn CSV layout
//! (`corn_<inst>spec.csv`, `corn_propvals.csv`).

use std::path::Path;

use ndarray::{Array1, Array2, Axis, concatenate};

use super::csv::read_table;
use super::mat::{DataSet, MatValue, dataset, read_mat};
use crate::error::SpxError;
use crate::spektron::baselines::TransferData;

/// Loaded pair plus what was found.
#[derive(Clone, Debug)]
pub struct InstrumentPair {
    pub data: TransferData,
    /// Wavelength axis (empty if the file has none).
    pub axis: Vec<f64>,
    pub property: String,
    pub properties: Vec<String>,
}

fn pick_property(
    path: &Path,
    field: &str,
    names: &[String],
    ncols: usize,
    want: &str,
) -> Result<usize, SpxError> {
    if let Some(i) = names
        .iter()
        .position(|n| n.trim().eq_ignore_ascii_case(want.trim()))
    {
        return Ok(i);
    }
    match want.trim().parse::<usize>() {
        Ok(k) if (1..=ncols).contains(&k) => Ok(k - 1),
        _ => Err(SpxError::field(
            path,
            field,
            format!(
                "no property `{want}`; available: {} (or a 1-based column number up to {ncols})",
                if names.is_empty() {
                    "(no names in the file)".to_string()
                } else {
                    names.join(", ")
                }
            ),
        )),
    }
}

fn stack(path: &Path, parts: Vec<DataSet>, name: &str) -> Result<DataSet, SpxError> {
    let views: Vec<_> = parts.iter().map(|d| d.data.view()).collect();
    let data = concatenate(Axis(0), &views)
        .map_err(|e| SpxError::field(path, name, format!("cannot stack splits: {e}")))?;
    Ok(DataSet {
        name: name.into(),
        data,
        axis: parts[0].axis.clone(),
        labels: parts[0].labels.clone(),
    })
}

fn from_mat(path: &Path, vars: &[(String, MatValue)], inst: &str) -> Result<DataSet, SpxError> {
    let has = |n: &str| vars.iter().any(|(v, _)| v == n);
    for cand in [format!("{inst}spec"), inst.to_string()] {
        if has(&cand) {
            return dataset(path, vars, &cand);
        }
    }
    let splits = ["calibrate", "validate", "test"];
    if has(&format!("calibrate_{inst}")) {
        let parts = splits
            .iter()
            .filter(|s| has(&format!("{s}_{inst}")))
            .map(|s| dataset(path, vars, &format!("{s}_{inst}")))
            .collect::<Result<Vec<_>, _>>()?;
        return stack(path, parts, inst);
    }
    let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    Err(SpxError::field(
        path,
        inst,
        format!(
            "no instrument `{inst}` (looked for `{inst}spec`, `{inst}`, `calibrate_{inst}`); variables: {}",
            names.join(", ")
        ),
    ))
}

/// Load source/target spectra and one property.
pub fn load_pair(
    path: &Path,
    source: &str,
    target: &str,
    property: &str,
) -> Result<InstrumentPair, SpxError> {
    let (src, tgt, props) = if path.is_dir() {
        let spec = |i: &str| -> Result<DataSet, SpxError> {
            let p = path.join(format!("corn_{i}spec.csv"));
            let t = read_table(&p)?;
            Ok(DataSet {
                name: i.into(),
                axis: t.numeric_header().unwrap_or_default(),
                data: t.data,
                labels: vec![],
            })
        };
        let pp = path.join("corn_propvals.csv");
        let t = read_table(&pp)?;
        let props = DataSet {
            name: "propvals".into(),
            data: t.data,
            axis: vec![],
            labels: t.header,
        };
        (spec(source)?, spec(target)?, props)
    } else {
        let vars = read_mat(path)?;
        let src = from_mat(path, &vars, source)?;
        let tgt = from_mat(path, &vars, target)?;
        let has = |n: &str| vars.iter().any(|(v, _)| v == n);
        let props = if has("propvals") {
            dataset(path, &vars, "propvals")?
        } else if has("calibrate_Y") {
            let parts = ["calibrate_Y", "validate_Y", "test_Y"]
                .iter()
                .filter(|s| has(s))
                .map(|s| dataset(path, &vars, s))
                .collect::<Result<Vec<_>, _>>()?;
            stack(path, parts, "Y")?
        } else {
            return Err(SpxError::field(
                path,
                "propvals",
                "no property table (`propvals` or `calibrate_Y`)",
            ));
        };
        (src, tgt, props)
    };
    if src.data.dim() != tgt.data.dim() || src.data.nrows() != props.data.nrows() {
        return Err(SpxError::file(
            path,
            format!(
                "source `{source}` {:?}, target `{target}` {:?} and properties {:?} do not pair up",
                src.data.dim(),
                tgt.data.dim(),
                props.data.dim()
            ),
        ));
    }
    let k = pick_property(
        path,
        &props.name,
        &props.labels,
        props.data.ncols(),
        property,
    )?;
    let y: Array1<f64> = props.data.column(k).to_owned();
    let name = props
        .labels
        .get(k)
        .cloned()
        .unwrap_or_else(|| format!("column {}", k + 1));
    let check = |d: &Array2<f64>, n: &str| -> Result<(), SpxError> {
        if d.iter().any(|v| !v.is_finite()) {
            return Err(SpxError::field(path, n, "contains NaN or infinite values"));
        }
        Ok(())
    };
    check(&src.data, source)?;
    check(&tgt.data, target)?;
    if y.iter().any(|v| !v.is_finite()) {
        return Err(SpxError::field(path, &name, "property has NaN values"));
    }
    Ok(InstrumentPair {
        axis: src.axis.clone(),
        data: TransferData {
            source: src.data,
            target: tgt.data,
            y,
        },
        property: name,
        properties: props.labels,
    })
}
