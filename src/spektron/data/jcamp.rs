//! JCAMP-DX 4.24/5.0 reader: `XYDATA=(X++(Y..Y))` in AFFN, PAC, SQZ, DIF and DUP form with the
//! DIF Y-check, `XYPOINTS=(XY..XY)` and `PEAK TABLE=(XY..XY)`; multi-block files and LINK
//! containers yield one spectrum per data block.

use std::collections::HashMap;
use std::path::Path;

use super::Spectrum;
use super::modality::Modality;
use crate::error::SpxError;

/// Label normalisation (JCAMP convention): upper case, drop spaces, `-`, `_`, `/`.
fn norm_label(l: &str) -> String {
    l.chars()
        .filter(|c| !matches!(c, ' ' | '-' | '_' | '/' | '\t'))
        .flat_map(char::to_uppercase)
        .collect()
}

fn strip_comment(line: &str) -> &str {
    match line.find("$$") {
        Some(i) => &line[..i],
        None => line,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tok {
    Abs(f64),
    Dif(f64),
    Dup(usize),
}

/// Split one compressed data line into tokens. `E`/`e` is an exponent only when it follows an
/// AFFN/PAC number that has not been started by an SQZ/DIF character and is followed by a
/// sign or a digit after a decimal point; otherwise it is SQZ +5 / −5.
fn tokenize(line: &str) -> Result<Vec<Tok>, String> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if c.is_whitespace() || c == ',' || c == ';' {
            i += 1;
            continue;
        }
        if c == '?' {
            out.push(Tok::Abs(f64::NAN));
            i += 1;
            continue;
        }
        // Leading digit and its kind.
        let (kind, lead, sign, start): (u8, Option<u32>, f64, usize) = match c {
            '+' | '-' | '.' | '0'..='9' => (b'a', None, 1.0, i),
            '@' => (b's', Some(0), 1.0, i + 1),
            'A'..='I' => (b's', Some(c as u32 - 'A' as u32 + 1), 1.0, i + 1),
            'a'..='i' => (b's', Some(c as u32 - 'a' as u32 + 1), -1.0, i + 1),
            '%' => (b'd', Some(0), 1.0, i + 1),
            'J'..='R' => (b'd', Some(c as u32 - 'J' as u32 + 1), 1.0, i + 1),
            'j'..='r' => (b'd', Some(c as u32 - 'j' as u32 + 1), -1.0, i + 1),
            'S'..='Z' => (b'u', Some(c as u32 - 'S' as u32 + 1), 1.0, i + 1),
            's' => (b'u', Some(9), 1.0, i + 1),
            _ => return Err(format!("unexpected character `{c}`")),
        };
        let mut j = start;
        if kind == b'a' && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        while j < b.len() {
            let d = b[j];
            if d.is_ascii_digit() || d == b'.' {
                j += 1;
            } else if kind == b'a'
                && (d == b'E' || d == b'e')
                && j + 1 < b.len()
                && (b[j + 1] == b'+' || b[j + 1] == b'-')
                && j + 2 < b.len()
                && b[j + 2].is_ascii_digit()
            {
                j += 2;
            } else {
                break;
            }
        }
        let text = &line[start..j];
        match kind {
            b'a' => {
                let v: f64 = text.parse().map_err(|_| format!("bad number `{text}`"))?;
                out.push(Tok::Abs(v));
            }
            _ => {
                let lead = lead.unwrap_or(0);
                let digits = format!("{lead}{text}");
                if text.contains('.') && kind == b'u' {
                    return Err(format!("bad DUP count `{digits}`"));
                }
                let v: f64 = digits
                    .parse()
                    .map_err(|_| format!("bad compressed number `{digits}`"))?;
                match kind {
                    b's' => out.push(Tok::Abs(sign * v)),
                    b'd' => out.push(Tok::Dif(sign * v)),
                    _ => out.push(Tok::Dup(v as usize)),
                }
            }
        }
        i = j.max(i + 1);
    }
    Ok(out)
}

/// Most ordinates one data table may decode to when NPOINTS does not say (16 Mi points, 128 MiB
/// of f64): far above any real spectrum, far below what a DUP count could ask for.
pub const MAX_POINTS: usize = 1 << 24;

/// Expand DUP counts; returns (values, was-the-value-a-DIF). At most `room` values: a DUP
/// count that would expand past it is an error before anything is allocated for it.
fn expand(tokens: &[Tok], room: usize) -> Result<Vec<(Tok, bool)>, String> {
    let mut out: Vec<(Tok, bool)> = Vec::with_capacity(tokens.len().min(room));
    for t in tokens {
        match *t {
            Tok::Dup(n) => {
                let last = *out.last().ok_or("DUP count with nothing to repeat")?;
                if n == 0 {
                    return Err("DUP count 0".into());
                }
                if out.len().saturating_add(n - 1) > room {
                    return Err(format!(
                        "DUP count {n} expands past the {room} points the table may hold \
                         (NPOINTS, or at most {MAX_POINTS})"
                    ));
                }
                for _ in 1..n {
                    out.push(last);
                }
            }
            other => {
                if out.len() >= room {
                    return Err(format!(
                        "more than the {room} points the table may hold (NPOINTS, or at most {MAX_POINTS})"
                    ));
                }
                out.push((other, matches!(other, Tok::Dif(_))))
            }
        }
    }
    Ok(out)
}

/// Decode `(X++(Y..Y))` lines into raw ordinates (before YFACTOR) and the X checkpoint of each
/// line (before XFACTOR).
/// Ordinates and the (X checkpoint, index of its ordinate) of each line.
type Decoded = (Vec<f64>, Vec<(f64, usize)>);

fn decode_xydata(lines: &[(usize, &str)], max_points: usize) -> Result<Decoded, String> {
    let mut ys: Vec<f64> = Vec::new();
    let mut checkpoints = Vec::new();
    let mut prev_ended_dif = false;
    for &(lineno, line) in lines {
        let toks = tokenize(line).map_err(|e| format!("line {lineno}: {e}"))?;
        if toks.is_empty() {
            continue;
        }
        let x = match toks[0] {
            Tok::Abs(v) => v,
            _ => return Err(format!("line {lineno}: does not start with an X value")),
        };
        // +1: a line may open with the Y-check repeat of the previous line's last ordinate.
        let room = (max_points + 1).saturating_sub(ys.len());
        let vals = expand(&toks[1..], room).map_err(|e| format!("line {lineno}: {e}"))?;
        let mut first = true;
        let mut last_dif = false;
        for (tok, is_dif) in vals {
            let y = match tok {
                Tok::Abs(v) => v,
                Tok::Dif(d) => {
                    let prev = *ys
                        .last()
                        .ok_or_else(|| format!("line {lineno}: DIF value with no previous Y"))?;
                    prev + d
                }
                Tok::Dup(_) => unreachable!("expanded"),
            };
            if first && prev_ended_dif && !is_dif {
                // Y-check: repeats the last ordinate of the previous line.
                let prev = *ys.last().expect("previous line had values");
                if (prev - y).abs() > 1e-6 * prev.abs().max(1.0) {
                    return Err(format!(
                        "line {lineno}: Y-check {y} differs from the previous line's last Y {prev}"
                    ));
                }
                checkpoints.push((x, ys.len() - 1));
                first = false;
                continue;
            }
            if first {
                checkpoints.push((x, ys.len()));
            }
            first = false;
            last_dif = is_dif;
            ys.push(y);
        }
        prev_ended_dif = last_dif;
    }
    Ok((ys, checkpoints))
}

/// One JCAMP data block, with its header.
#[derive(Clone, Debug, Default)]
struct Block {
    header: HashMap<String, String>,
    table_label: String,
    table_form: String,
    table_lines: Vec<(usize, String)>,
}

fn num(path: &Path, b: &Block, key: &str) -> Result<Option<f64>, SpxError> {
    match b.header.get(key) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| SpxError::field(path, key, format!("not a number: `{}`", v.trim()))),
    }
}

fn block_to_spectrum(path: &Path, b: &Block, index: usize) -> Result<Spectrum, SpxError> {
    let label = b.table_label.clone();
    let xf = num(path, b, "XFACTOR")?.unwrap_or(1.0);
    let yf = num(path, b, "YFACTOR")?.unwrap_or(1.0);
    let lines: Vec<(usize, &str)> = b
        .table_lines
        .iter()
        .map(|(n, s)| (*n, s.as_str()))
        .collect();
    let form = b.table_form.replace(' ', "").to_ascii_uppercase();
    let (x, y) = if label == "XYDATA" && form.starts_with("(X++(Y..Y))") {
        let npoints = num(path, b, "NPOINTS")?;
        if let Some(np) = npoints
            && !(np >= 0.0 && np <= MAX_POINTS as f64 && np.fract() == 0.0)
        {
            return Err(SpxError::field(
                path,
                "NPOINTS",
                format!("{np} is not a point count in 0..={MAX_POINTS}"),
            ));
        }
        let max_points = npoints.map_or(MAX_POINTS, |np| np as usize);
        let (raw, checkpoints) =
            decode_xydata(&lines, max_points).map_err(|e| SpxError::field(path, "XYDATA", e))?;
        let n = raw.len();
        if let Some(np) = npoints
            && np as usize != n
        {
            return Err(SpxError::field(
                path,
                "XYDATA",
                format!("decoded {n} points but NPOINTS = {np} (truncated or corrupt file?)"),
            ));
        }
        let first = num(path, b, "FIRSTX")?;
        let last = num(path, b, "LASTX")?;
        let x: Vec<f64> = match (first, last) {
            (Some(f), Some(l)) if n > 1 => (0..n)
                .map(|i| f + (l - f) * i as f64 / (n - 1) as f64)
                .collect(),
            (Some(f), _) if n == 1 => vec![f],
            _ => {
                // No FIRSTX/LASTX: X from each line's checkpoint and DELTAX.
                let dx = num(path, b, "DELTAX")?.ok_or_else(|| {
                    SpxError::field(path, "DELTAX", "missing (and no FIRSTX/LASTX)")
                })?;
                let mut x = vec![f64::NAN; n];
                for (k, &(cx, start)) in checkpoints.iter().enumerate() {
                    let end = checkpoints.get(k + 1).map_or(n, |c| c.1);
                    for (m, xi) in x[start..end].iter_mut().enumerate() {
                        *xi = cx * xf + m as f64 * dx;
                    }
                }
                x
            }
        };
        (x, raw.into_iter().map(|v| v * yf).collect::<Vec<_>>())
    } else if (label == "XYPOINTS" || label == "PEAKTABLE") && form.starts_with("(XY..XY)") {
        let mut vals = Vec::new();
        for &(lineno, line) in &lines {
            for t in tokenize(line)
                .map_err(|e| SpxError::field(path, label.as_str(), format!("line {lineno}: {e}")))?
            {
                match t {
                    Tok::Abs(v) => vals.push(v),
                    _ => {
                        return Err(SpxError::field(
                            path,
                            label.as_str(),
                            format!("line {lineno}: compressed values in an (XY..XY) table"),
                        ));
                    }
                }
            }
        }
        if vals.len() % 2 != 0 {
            return Err(SpxError::field(
                path,
                label.as_str(),
                "odd number of values in an (XY..XY) table",
            ));
        }
        let x = vals.iter().step_by(2).map(|v| v * xf).collect();
        let y = vals.iter().skip(1).step_by(2).map(|v| v * yf).collect();
        (x, y)
    } else {
        return Err(SpxError::field(
            path,
            label.as_str(),
            format!("unsupported table form `{}`", b.table_form.trim()),
        ));
    };
    let get = |k: &str| {
        b.header
            .get(k)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let x_max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let modality = Modality::from_jcamp(&get("DATATYPE"), &get("XUNITS"), x_max);
    let title = get("TITLE");
    Ok(Spectrum {
        x,
        y,
        modality,
        name: if title.is_empty() {
            format!("block{index}")
        } else {
            title
        },
        x_units: get("XUNITS"),
        y_units: get("YUNITS"),
    })
}

/// Parse JCAMP-DX text; `path` is only used in error messages.
pub fn parse_jcamp(path: &Path, text: &str) -> Result<Vec<Spectrum>, SpxError> {
    let mut blocks: Vec<Block> = Vec::new();
    let mut stack: Vec<Block> = Vec::new();
    let mut cur: Option<Block> = None;
    let mut in_table = false;
    let mut last_label = String::new();
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = strip_comment(raw);
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("##") {
            let (label, value) = rest.split_once('=').unwrap_or((rest, ""));
            let label = norm_label(label);
            in_table = false;
            if label == "TITLE" {
                if let Some(b) = cur.take() {
                    stack.push(b); // LINK container: nested block
                }
                cur = Some(Block::default());
            }
            let b = cur.get_or_insert_with(Block::default);
            match label.as_str() {
                "END" => {
                    let done = cur.take().expect("current block");
                    if !done.table_label.is_empty() {
                        blocks.push(done);
                    }
                    cur = stack.pop();
                }
                "XYDATA" | "XYPOINTS" | "PEAKTABLE" => {
                    b.table_label = label.clone();
                    b.table_form = value.trim().to_string();
                    b.table_lines.clear();
                    in_table = true;
                }
                _ => {
                    b.header.insert(label.clone(), value.to_string());
                }
            }
            last_label = label;
        } else if in_table {
            if let Some(b) = cur.as_mut()
                && !t.trim().is_empty()
            {
                b.table_lines.push((lineno, t.to_string()));
            }
        } else if let Some(b) = cur.as_mut()
            && let Some(v) = b.header.get_mut(&last_label)
        {
            // Value continued on the next line.
            v.push('\n');
            v.push_str(line);
        }
    }
    if let Some(b) = cur.take()
        && !b.table_label.is_empty()
    {
        // Missing ##END=: accept the block, the point count check still catches truncation.
        blocks.push(b);
    }
    if blocks.is_empty() {
        return Err(SpxError::file(
            path,
            "no JCAMP-DX data table (XYDATA, XYPOINTS or PEAK TABLE) found",
        ));
    }
    blocks
        .iter()
        .enumerate()
        .map(|(k, b)| block_to_spectrum(path, b, k))
        .collect()
}

/// Read a JCAMP-DX file.
pub fn read_jcamp(path: &Path) -> Result<Vec<Spectrum>, SpxError> {
    let bytes = std::fs::read(path).map_err(|e| SpxError::io(path, e))?;
    parse_jcamp(path, &String::from_utf8_lossy(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_of_each_form() {
        use Tok::*;
        assert_eq!(
            tokenize("1 +10-5").unwrap(),
            vec![Abs(1.0), Abs(10.0), Abs(-5.0)]
        );
        assert_eq!(
            tokenize("@A1b23J4%S3s").unwrap(),
            vec![
                Abs(0.0),
                Abs(11.0),
                Abs(-223.0),
                Dif(14.0),
                Dif(0.0),
                Dup(13),
                Dup(9)
            ]
        );
        assert_eq!(
            tokenize("1.5E+3 2e-1").unwrap(),
            vec![Abs(1500.0), Abs(0.2)]
        );
        // SQZ E after a number is +5, not an exponent.
        assert_eq!(tokenize("10E5").unwrap(), vec![Abs(10.0), Abs(55.0)]);
    }

    #[test]
    fn dif_dup_and_ycheck() {
        // 1, 2, 3, 4 then the next line repeats 4 as its Y-check.
        let (y, cp) = decode_xydata(&[(1, "0 A J U"), (2, "3 D J")], MAX_POINTS).unwrap();
        assert_eq!(y, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(cp, vec![(0.0, 0), (3.0, 3)]);
        let err = decode_xydata(&[(1, "0 A J"), (2, "2 E J")], MAX_POINTS).unwrap_err();
        assert!(err.contains("Y-check"), "{err}");
    }

    #[test]
    fn dup_bomb_is_refused_before_expansion() {
        // DUP `V` is 4, so `V99999999` is a count of 499999999: capped by NPOINTS before any
        // allocation, and by MAX_POINTS without NPOINTS.
        let err = decode_xydata(&[(1, "0 1V99999999")], 10).unwrap_err();
        assert!(err.contains("DUP count 499999999"), "{err}");
        let err = decode_xydata(&[(1, "0 1V99999999")], MAX_POINTS).unwrap_err();
        assert!(err.contains("DUP count"), "{err}");
        let text = "##TITLE=bomb\n##NPOINTS=4\n##FIRSTX=0\n##LASTX=3\n##XYDATA=(X++(Y..Y))\n0 1V99999999\n##END=\n";
        let err = parse_jcamp(Path::new("b.jdx"), text)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("b.jdx: field `XYDATA`"), "{err}");
        let text = "##TITLE=t\n##NPOINTS=1e12\n##XYDATA=(X++(Y..Y))\n0 1 2\n##END=\n";
        let err = parse_jcamp(Path::new("c.jdx"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("field `NPOINTS`"), "{err}");
    }
}
