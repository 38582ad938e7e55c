//! Output pixel grid: odd side, centred on the IFU centre, pixel j = iy·nside + ix with centre
//! ((ix − nside/2)·p, (iy − nside/2)·p) in the XPOS/YPOS frame (arcsec).

/// Grid side length (arcsec) per bundle size, from the authors' code.
pub fn bundle_size(nfiber: usize) -> Option<f64> {
    match nfiber {
        7 => Some(12.0),
        19 => Some(17.0),
        37 => Some(22.0),
        61 => Some(27.0),
        91 => Some(32.0),
        127 => Some(36.0),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    pub nside: usize,
    pub pixel: f64,
}

impl Grid {
    /// `size` arcsec across (odd number of pixels, as `(ceil(L/p)//2)*2 + 1`).
    pub fn new(size: f64, pixel: f64) -> Self {
        let n = (size / pixel).ceil() as usize;
        Grid {
            nside: (n / 2) * 2 + 1,
            pixel,
        }
    }

    /// Side length for a bundle: the table above, or (for other sizes) the position extent
    /// plus a fiber diameter and the fit radius on each side.
    pub fn for_bundle(nfiber: usize, pixel: f64, grid_size: f64, max_abs_pos: f64) -> Self {
        let size = if grid_size > 0.0 {
            grid_size
        } else {
            bundle_size(nfiber).unwrap_or(2.0 * (max_abs_pos + 3.0))
        };
        Grid::new(size, pixel)
    }

    pub fn npix(&self) -> usize {
        self.nside * self.nside
    }

    pub fn centre(&self, j: usize) -> (f64, f64) {
        let c = (self.nside / 2) as f64;
        let (iy, ix) = (j / self.nside, j % self.nside);
        ((ix as f64 - c) * self.pixel, (iy as f64 - c) * self.pixel)
    }

    /// Pixels whose centre lies within `rlim` of at least one of the positions (sorted).
    pub fn pixels_near(&self, xs: &[f64], ys: &[f64], rlim: f64) -> Vec<usize> {
        let n = self.nside as isize;
        let c = (self.nside / 2) as f64;
        let mut keep = vec![false; self.npix()];
        let reach = (rlim / self.pixel).ceil() as isize + 1;
        for (&x, &y) in xs.iter().zip(ys) {
            if !x.is_finite() || !y.is_finite() {
                continue;
            }
            let (fx, fy) = (x / self.pixel + c, y / self.pixel + c);
            let (cx, cy) = (fx.round() as isize, fy.round() as isize);
            for iy in (cy - reach).max(0)..=(cy + reach).min(n - 1) {
                for ix in (cx - reach).max(0)..=(cx + reach).min(n - 1) {
                    let j = (iy * n + ix) as usize;
                    if keep[j] {
                        continue;
                    }
                    let (px, py) = self.centre(j);
                    if (px - x).powi(2) + (py - y).powi(2) <= rlim * rlim {
                        keep[j] = true;
                    }
                }
            }
        }
        (0..self.npix()).filter(|&j| keep[j]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_sizes_match_the_authors_table() {
        // Note's derived table: 19 → 23² at 0.75", 35² at 0.5"; 127 → 49² and 73².
        assert_eq!(Grid::for_bundle(19, 0.75, 0.0, 0.0).nside, 23);
        assert_eq!(Grid::for_bundle(19, 0.5, 0.0, 0.0).nside, 35);
        assert_eq!(Grid::for_bundle(127, 0.75, 0.0, 0.0).nside, 49);
        assert_eq!(Grid::for_bundle(127, 0.5, 0.0, 0.0).nside, 73);
        let g = Grid::new(17.0, 0.75);
        assert_eq!(g.centre(g.npix() / 2), (0.0, 0.0));
        let near = g.pixels_near(&[0.0], &[0.0], 0.8);
        assert_eq!(near.len(), 5);
    }
}
