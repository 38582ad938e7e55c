//! numpy-compatible seeded splits, so the protocol of the research note (§2.3:
//! `np.random.RandomState(s).permutation`, sklearn `KFold(shuffle=True, random_state=s)`) is
//! reproduced row for row: MT19937 with `init_genrand` seeding and numpy's legacy
//! `random_interval` rejection sampler inside a Fisher–Yates shuffle.

/// MT19937 (Matsumoto & Nishimura), 32-bit output.
pub struct Mt19937 {
    mt: [u32; 624],
    idx: usize,
}

impl Mt19937 {
    pub fn new(seed: u32) -> Self {
        let mut mt = [0u32; 624];
        mt[0] = seed;
        for i in 1..624 {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { mt, idx: 624 }
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.idx >= 624 {
            for i in 0..624 {
                let y = (self.mt[i] & 0x8000_0000) | (self.mt[(i + 1) % 624] & 0x7fff_ffff);
                let mut v = self.mt[(i + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    v ^= 0x9908_b0df;
                }
                self.mt[i] = v;
            }
            self.idx = 0;
        }
        let mut y = self.mt[self.idx];
        self.idx += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Uniform integer in [0, max] (numpy `random_interval`, max < 2³²).
    fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for s in [1, 2, 4, 8, 16] {
            mask |= mask >> s;
        }
        loop {
            let v = self.next_u32() & mask;
            if v <= max {
                return v;
            }
        }
    }
}

/// `np.random.RandomState(seed).permutation(n)`.
pub fn permutation(seed: u32, n: usize) -> Vec<usize> {
    let mut rng = Mt19937::new(seed);
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.interval(i as u32) as usize;
        v.swap(i, j);
    }
    v
}

/// Test folds of sklearn `KFold(k, shuffle=True, random_state=seed)` over `n` rows.
pub fn kfold(seed: u32, n: usize, k: usize) -> Vec<Vec<usize>> {
    let idx = permutation(seed, n);
    let k = k.clamp(2, n.max(2));
    let mut folds = Vec::with_capacity(k);
    let mut start = 0;
    for f in 0..k {
        let size = n / k + usize::from(f < n % k);
        folds.push(idx[start..start + size].to_vec());
        start += size;
    }
    folds
}
