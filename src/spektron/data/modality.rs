//! The one modality table used everywhere (corpus HDF5 `/modality`, model domain tokens).
//! Upstream Spektron used two different tables (embedding vs corpus reader); we keep one.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
#[repr(i8)]
pub enum Modality {
    Ir = 0,
    Raman = 1,
    Nir = 2,
    Ftir = 3,
    Unknown = 4,
}

impl Modality {
    pub const ALL: [Modality; 5] = [
        Modality::Ir,
        Modality::Raman,
        Modality::Nir,
        Modality::Ftir,
        Modality::Unknown,
    ];

    pub fn code(self) -> i8 {
        self as i8
    }

    pub fn from_code(c: i8) -> Option<Modality> {
        Modality::ALL.get(usize::try_from(c).ok()?).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            Modality::Ir => "IR",
            Modality::Raman => "RAMAN",
            Modality::Nir => "NIR",
            Modality::Ftir => "FTIR",
            Modality::Unknown => "UNKNOWN",
        }
    }

    /// Parse a user-facing name (case-insensitive).
    pub fn parse(s: &str) -> Option<Modality> {
        let u = s.trim().to_ascii_uppercase();
        Modality::ALL.into_iter().find(|m| m.name() == u)
    }

    /// Guess from a JCAMP `DATA TYPE` and `XUNITS`: NIR when an infrared spectrum is on a
    /// nanometre axis above 700 nm, FTIR when the type says so.
    pub fn from_jcamp(data_type: &str, x_units: &str, x_max: f64) -> Modality {
        let t = data_type.to_ascii_uppercase();
        let u = x_units.to_ascii_uppercase();
        if t.contains("RAMAN") {
            Modality::Raman
        } else if t.contains("NEAR INFRARED") || t.contains("NIR") {
            Modality::Nir
        } else if t.contains("INFRARED") || t.contains("IR SPECTRUM") {
            if u.contains("NANOMETER") && x_max > 700.0 {
                Modality::Nir
            } else if t.contains("FT") {
                Modality::Ftir
            } else {
                Modality::Ir
            }
        } else {
            Modality::Unknown
        }
    }
}
