//! `--shard K/N` of SLURM-style job arrays, shared by the methods that split work over tasks:
//! CRR gives task K the K-th of N contiguous wavelength blocks (`crr::shard`), DIP's catalog
//! mode the sources i with i mod N = K − 1 (`dip::catalog`).

/// Task K (1-based) of N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobShard {
    pub k: usize,
    pub n: usize,
}

impl std::str::FromStr for JobShard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}`: expected K/N, e.g. 3/16"))?;
        let k: usize = a
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: K is not a number"))?;
        let n: usize = b
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: N is not a number"))?;
        if n == 0 || k == 0 || k > n {
            return Err(format!("`{s}`: need 1 ≤ K ≤ N"));
        }
        Ok(JobShard { k, n })
    }
}

#[cfg(test)]
mod tests {
    use super::JobShard;

    #[test]
    fn parses_k_of_n() {
        assert_eq!("3/16".parse::<JobShard>(), Ok(JobShard { k: 3, n: 16 }));
        assert_eq!(" 1 / 1 ".parse::<JobShard>(), Ok(JobShard { k: 1, n: 1 }));
        for bad in ["0/4", "5/4", "1/0", "x/4", "3", "1/y"] {
            assert!(bad.parse::<JobShard>().is_err(), "{bad}");
        }
    }
}
