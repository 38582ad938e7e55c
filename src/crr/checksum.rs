//! FITS DATASUM/CHECKSUM (the FITS checksum convention, cfitsio `fits_write_chksum` /
//! `fits_verify_chksum`) on every HDU of the files CRR writes, and their verification: a
//! truncated or bit-flipped shard part is refused at merge instead of merged.

use std::os::raw::{c_char, c_int, c_long, c_ulong};
use std::path::Path;

use fitsio::FitsFile;
use fitsio::sys::{
    ffcsum, ffesum, ffghadll, ffgkys, ffmahd, ffmbyt, ffmkys, ffpcks, ffrdef, ffvcks, fitsfile,
};

use crate::error::SpxError;
use crate::io::atomic::with_atomic_path;
use crate::io::fits::{self, FitsWriter};

/// Primary-header key recording how many HDUs the writer made (a file cut at an HDU boundary
/// still has valid checksums on what is left).
pub const NHDU_KEY: &str = "NHDU";

/// [`fits::write_fits`], then the HDU count as [`NHDU_KEY`] and DATASUM/CHECKSUM on every HDU,
/// all before the file appears under its final name.
pub fn write_fits_checksummed<F>(path: &Path, build: F) -> Result<(), SpxError>
where
    F: FnOnce(&mut FitsWriter) -> Result<(), SpxError>,
{
    with_atomic_path(path, |tmp| {
        fits::write_fits(tmp, build)?;
        add_checksums(tmp).map_err(|m| SpxError::file(path, m))
    })
}

fn add_checksums(path: &Path) -> Result<(), String> {
    let mut f = FitsFile::edit(path).map_err(|e| format!("cannot reopen to checksum: {e}"))?;
    let n = f.num_hdus().map_err(|e| format!("HDU count: {e}"))?;
    f.primary_hdu()
        .and_then(|h| h.write_key(&mut f, NHDU_KEY, n as i64))
        .map_err(|e| format!("{NHDU_KEY}: {e}"))?;
    for i in 1..=n {
        let mut status: c_int = 0;
        let mut kind: c_int = 0;
        // SAFETY: `f` is an open, writable cfitsio handle for the duration of the calls; the
        // out-parameters are valid locals.
        unsafe {
            let raw = f.as_raw();
            ffmahd(raw, i as c_int, &mut kind, &mut status);
            ffpcks(raw, &mut status);
            if status == 0 {
                undate_checksum(raw, &mut status);
            }
        }
        if status != 0 {
            return Err(format!(
                "HDU {i}: writing DATASUM/CHECKSUM failed (status {status})"
            ));
        }
    }
    Ok(())
}

/// cfitsio's `ffpcks` stamps the current date into the DATASUM/CHECKSUM comments, so two runs
/// would differ in bytes. Give both cards fixed comments and recompute CHECKSUM over the header
/// (plus DATASUM, unchanged) exactly as `ffpcks` does: 1's-complement sum, complemented, ASCII
/// encoded.
///
/// # Safety
/// `raw` must be an open, writable cfitsio handle positioned at the HDU.
unsafe fn undate_checksum(raw: *mut fitsfile, status: &mut c_int) {
    let mut datasum = [0 as c_char; 72];
    // SAFETY: valid handle (caller), NUL-terminated key names, buffers of FLEN_VALUE (71+1).
    unsafe {
        ffgkys(
            raw,
            c"DATASUM".as_ptr(),
            datasum.as_mut_ptr(),
            std::ptr::null_mut(),
            status,
        );
        ffmkys(
            raw,
            c"DATASUM".as_ptr(),
            datasum.as_ptr(),
            c"data unit checksum".as_ptr(),
            status,
        );
        ffmkys(
            raw,
            c"CHECKSUM".as_ptr(),
            c"0000000000000000".as_ptr(),
            c"HDU checksum".as_ptr(),
            status,
        );
        ffrdef(raw, status);
        let text = std::ffi::CStr::from_ptr(datasum.as_ptr()).to_string_lossy();
        let Ok(dsum) = text.trim().trim_matches('\'').trim().parse::<u64>() else {
            *status = 1;
            return;
        };
        let (mut head, mut data, mut end) = (0i64, 0i64, 0i64);
        ffghadll(raw, &mut head, &mut data, &mut end, status);
        let mut sum = dsum as c_ulong;
        ffmbyt(raw, head, 0, status);
        ffcsum(raw, ((data - head) / 2880) as c_long, &mut sum, status);
        let mut ascii = [0 as c_char; 17];
        ffesum(sum, 1, ascii.as_mut_ptr());
        ffmkys(
            raw,
            c"CHECKSUM".as_ptr(),
            ascii.as_ptr(),
            c"&".as_ptr(),
            status,
        );
    }
}

/// Verify that every HDU carries DATASUM/CHECKSUM that match its bytes, and that the file has
/// as many HDUs as were written. The error names the file and the HDU.
pub fn verify_checksums(path: &Path) -> Result<(), SpxError> {
    let mut f = FitsFile::open(path)
        .map_err(|e| SpxError::file(path, format!("not a readable FITS file: {e}")))?;
    let n = f
        .num_hdus()
        .map_err(|e| SpxError::file(path, format!("HDU count: {e}")))?;
    let want = f
        .primary_hdu()
        .and_then(|h| h.read_key::<i64>(&mut f, NHDU_KEY))
        .map_err(|_| SpxError::field(path, NHDU_KEY, "missing (not written by spx crr)"))?;
    if want != n as i64 {
        return Err(SpxError::field(
            path,
            NHDU_KEY,
            format!("file has {n} HDUs, {want} were written (truncated)"),
        ));
    }
    for i in 1..=n {
        let (mut status, mut kind, mut data, mut hdu): (c_int, c_int, c_int, c_int) = (0, 0, 0, 0);
        // SAFETY: as in `add_checksums`, on a read-only handle.
        unsafe {
            let raw = f.as_raw();
            ffmahd(raw, i as c_int, &mut kind, &mut status);
            ffvcks(raw, &mut data, &mut hdu, &mut status);
        }
        let what = format!("HDU {i} DATASUM/CHECKSUM");
        if status != 0 {
            return Err(SpxError::field(
                path,
                what,
                format!("cannot be read (status {status}; truncated file?)"),
            ));
        }
        match (data, hdu) {
            (1, 1) => {}
            (0, _) | (_, 0) => return Err(SpxError::field(path, what, "missing")),
            _ => {
                return Err(SpxError::field(
                    path,
                    what,
                    "do not match the bytes (corrupt or truncated file)",
                ));
            }
        }
    }
    Ok(())
}
