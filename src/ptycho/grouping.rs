//! Grouping scan positions into solution regions (PtychoPINN `RawData.generate_grouped_data`).
//!
//! Each group has a seed position; its C = gridsize² members are drawn without replacement from
//! the seed's K nearest neighbours (the seed itself excluded, as in the reference), using a
//! KD-tree (`kiddo`). Only when the whole scan has no more than C positions besides the seed is
//! the seed allowed into its own group, since otherwise no group could be formed.

use std::num::NonZero;

use kiddo::{ImmutableKdTree, SquaredEuclidean};
use ndarray::{Array2, Array4, ArrayView3};
use rand::Rng;
use rand::seq::index::sample;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::SpxError;

/// `[ptycho.group]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub gridsize: usize,
    pub neighbor_count: usize,
    /// 0 or ≥ n: one group per position, in order.
    pub n_groups: usize,
    /// Order of a group's members along the channel axis.
    #[serde(default)]
    pub order: ChannelOrder,
    /// How groups are formed.
    #[serde(default)]
    pub mode: GroupMode,
}

/// How the positions of a scan are formed into groups.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GroupMode {
    /// Each group's members are drawn from a seed position's K nearest neighbours
    /// (PtychoPINN `generate_grouped_data`, for random scans).
    #[default]
    Neighbors,
    /// Consecutive runs of C = gridsize² positions in file order are the groups, members in
    /// stored order (a grid scan from `ptycho.simulate.scan = "grid"`, PtychoPINN's grid mode).
    Blocks,
}

/// How the C members of a group are laid out along the channel axis.
///
/// The network sees only the C patterns, never their positions (those enter the physics
/// layers alone), so the channel order is all it knows of a group's geometry. Each pattern of
/// a real object under a centrosymmetric probe is centrosymmetric, so the object's odd part in
/// a patch (e.g. the sign of a gradient) shows only in how the patterns differ between
/// members: with `random` order the network cannot tell which member lies where. Measured
/// (docs/ptycho-dose.md §5): `grid` halves the PyTorch twin's held-out deviance gap but does
/// not raise spx's held-out SSIM, so the default stays the reference's `random`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    /// Row-major on the gridsize × gridsize grid: members sorted by y into gridsize rows,
    /// each row sorted by x (the channel layout of PtychoPINN's grid-scan mode).
    Grid,
    /// The order the members were drawn in (PtychoPINN's `generate_grouped_data`).
    #[default]
    Random,
}

impl GroupConfig {
    /// Patterns per group, C = gridsize².
    pub fn channels(&self) -> usize {
        self.gridsize * self.gridsize
    }
}

/// Which positions form each group and their coordinates; shapes as in PtychoPINN.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupIndex {
    /// (B,) the seed position of each group (distinct).
    pub seeds: Vec<usize>,
    /// (B, C) position indices.
    pub nn_indices: Array2<usize>,
    /// (B, 1, 2, C): `[b, 0, 0, c]` = x, `[b, 0, 1, c]` = y.
    pub coords_nn: Array4<f64>,
    /// (B, 1, 2, 1): mean of the group's coordinates.
    pub coords_offsets: Array4<f64>,
    /// (B, 1, 2, C): −(coords_nn − coords_offsets).
    pub coords_relative: Array4<f64>,
}

impl GroupIndex {
    pub fn n_groups(&self) -> usize {
        self.nn_indices.nrows()
    }
}

/// Sort position indices row-major on a `gridsize`-wide grid: by y into rows of `gridsize`,
/// each row by x (ties keep their order).
pub fn grid_order(members: &mut [usize], x: &[f64], y: &[f64], gridsize: usize) {
    members.sort_by(|&a, &b| y[a].total_cmp(&y[b]));
    for row in members.chunks_mut(gridsize.max(1)) {
        row.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    }
}

/// Grouped diffraction: `diffraction[b, :, :, c]` is pattern `nn_indices[b, c]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Grouped {
    pub index: GroupIndex,
    /// (B, N, N, C) as stored.
    pub diffraction: Array4<f32>,
    /// (B, N, N, C) scaled by `norm_factor`.
    pub x_full: Array4<f32>,
    /// sqrt((N/2)² / mean_{b,c} Σ_{h,w} X²), computed in f64.
    pub norm_factor: f64,
}

/// Choose groups of positions. Errors name the config key at fault.
pub fn group_positions(
    x: &[f64],
    y: &[f64],
    cfg: &GroupConfig,
    rng: &mut impl Rng,
) -> Result<GroupIndex, SpxError> {
    let n = x.len();
    assert_eq!(n, y.len(), "group_positions: x and y differ in length");
    let c = cfg.channels();
    let k = cfg.neighbor_count;
    if c == 0 {
        return Err(SpxError::Config(
            "ptycho.group.gridsize must be >= 1".into(),
        ));
    }
    if k < c {
        return Err(SpxError::Config(format!(
            "ptycho.group.neighbor_count = {k} must be >= C = gridsize² = {c}"
        )));
    }
    if n < c {
        return Err(SpxError::Config(format!(
            "{n} scan positions are fewer than C = gridsize² = {c} (ptycho.group.gridsize = {})",
            cfg.gridsize
        )));
    }
    if cfg.mode == GroupMode::Blocks {
        return block_groups(x, y, cfg, rng);
    }
    let seeds: Vec<usize> = if cfg.n_groups == 0 || cfg.n_groups >= n {
        (0..n).collect()
    } else {
        sample(rng, n, cfg.n_groups).into_vec()
    };
    let b = seeds.len();
    let mut nn = Array2::<usize>::zeros((b, c));
    if c == 1 {
        nn.column_mut(0)
            .iter_mut()
            .zip(&seeds)
            .for_each(|(d, &s)| *d = s);
    } else {
        let points: Vec<[f64; 2]> = x.iter().zip(y).map(|(&a, &b)| [a, b]).collect();
        let tree = ImmutableKdTree::<f64, 2>::new_from_slice(&points)
            .map_err(|e| SpxError::Config(format!("cannot build the KD-tree: {e:?}")))?;
        let q = NonZero::new((k + 1).min(n)).expect("n >= C >= 1");
        // Neighbour queries are independent and run in parallel; the random choice of members
        // stays sequential so the groups do not depend on the thread count.
        let pools: Vec<Vec<usize>> = seeds
            .par_iter()
            .map(|&s| {
                let hits = tree
                    .query(&points[s])
                    .nearest_n::<SquaredEuclidean<f64>>(q)
                    .execute();
                let mut pool: Vec<usize> = hits.iter().map(|h| h.item as usize).collect();
                // Drop the seed itself; with duplicate positions it may not be the first hit.
                match pool.iter().position(|&i| i == s) {
                    Some(p) => {
                        pool.remove(p);
                    }
                    None => {
                        pool.pop();
                    }
                }
                if pool.len() < c {
                    pool.push(s);
                }
                pool
            })
            .collect();
        for (g, pool) in pools.iter().enumerate() {
            for (j, pick) in sample(rng, pool.len(), c).into_iter().enumerate() {
                nn[[g, j]] = pool[pick];
            }
        }
        if cfg.order == ChannelOrder::Grid {
            for mut row in nn.rows_mut() {
                let mut members = row.to_vec();
                grid_order(&mut members, x, y, cfg.gridsize);
                row.iter_mut().zip(members).for_each(|(d, s)| *d = s);
            }
        }
    }
    Ok(index_from_members(seeds, nn, x, y))
}

/// [`GroupMode::Blocks`]: group g = positions g·C … g·C + C − 1 (all blocks, or `n_groups`
/// of them drawn without replacement, kept in file order).
fn block_groups(
    x: &[f64],
    y: &[f64],
    cfg: &GroupConfig,
    rng: &mut impl Rng,
) -> Result<GroupIndex, SpxError> {
    let (n, c) = (x.len(), cfg.channels());
    if n % c != 0 {
        return Err(SpxError::Config(format!(
            "ptycho.group.mode = \"blocks\" needs a multiple of C = gridsize² = {c} positions, \
             the scan has {n}"
        )));
    }
    let blocks = n / c;
    let mut picked: Vec<usize> = if cfg.n_groups == 0 || cfg.n_groups >= blocks {
        (0..blocks).collect()
    } else {
        sample(rng, blocks, cfg.n_groups).into_vec()
    };
    picked.sort_unstable();
    let nn = Array2::from_shape_fn((picked.len(), c), |(g, j)| picked[g] * c + j);
    let seeds = picked.iter().map(|&g| g * c).collect();
    Ok(index_from_members(seeds, nn, x, y))
}

/// Coordinates, centroids and relative offsets of the groups `nn` (B, C).
fn index_from_members(seeds: Vec<usize>, nn: Array2<usize>, x: &[f64], y: &[f64]) -> GroupIndex {
    let (b, c) = nn.dim();
    let mut coords_nn = Array4::<f64>::zeros((b, 1, 2, c));
    let mut offsets = Array4::<f64>::zeros((b, 1, 2, 1));
    for g in 0..b {
        for j in 0..c {
            let i = nn[[g, j]];
            coords_nn[[g, 0, 0, j]] = x[i];
            coords_nn[[g, 0, 1, j]] = y[i];
        }
        for a in 0..2 {
            offsets[[g, 0, a, 0]] = (0..c).map(|j| coords_nn[[g, 0, a, j]]).sum::<f64>() / c as f64;
        }
    }
    let relative = Array4::from_shape_fn((b, 1, 2, c), |(g, _, a, j)| {
        -(coords_nn[[g, 0, a, j]] - offsets[[g, 0, a, 0]])
    });
    GroupIndex {
        seeds,
        nn_indices: nn,
        coords_nn,
        coords_offsets: offsets,
        coords_relative: relative,
    }
}

/// Gather the (n, N, N) patterns into (B, N, N, C) and normalise (PtychoPINN
/// `normalize_data`): the mean over groups and channels of Σ_{h,w} X_full² becomes (N/2)².
pub fn gather(index: GroupIndex, diffraction: ArrayView3<f32>) -> Grouped {
    let (_, h, w) = diffraction.dim();
    let (b, c) = index.nn_indices.dim();
    let mut out = Array4::<f32>::zeros((b, h, w, c));
    let mut sum_sq = 0.0f64;
    for g in 0..b {
        for j in 0..c {
            let p = diffraction.index_axis(ndarray::Axis(0), index.nn_indices[[g, j]]);
            for ((r, col), &v) in p.indexed_iter() {
                out[[g, r, col, j]] = v;
                sum_sq += f64::from(v) * f64::from(v);
            }
        }
    }
    let mean = sum_sq / (b * c).max(1) as f64;
    let half = h as f64 / 2.0;
    let norm_factor = if mean > 0.0 {
        (half * half / mean).sqrt()
    } else {
        1.0
    };
    let x_full = out.mapv(|v| (f64::from(v) * norm_factor) as f32);
    Grouped {
        index,
        diffraction: out,
        x_full,
        norm_factor,
    }
}

/// Group a scan: [`group_positions`] then [`gather`].
pub fn group(
    x: &[f64],
    y: &[f64],
    diffraction: ArrayView3<f32>,
    cfg: &GroupConfig,
    rng: &mut impl Rng,
) -> Result<Grouped, SpxError> {
    if diffraction.dim().0 != x.len() {
        return Err(SpxError::Config(format!(
            "{} diffraction patterns for {} positions",
            diffraction.dim().0,
            x.len()
        )));
    }
    let index = group_positions(x, y, cfg, rng)?;
    Ok(gather(index, diffraction))
}
