//! Numeric (and fixed-length string) attributes of the root group.
//!
//! `rust-hdf5` 0.7 reads dataset attributes of any type but group attributes only as strings.
//! The root group's attributes are read here with the crate's public format decoders: the
//! superblock (v0–v3) gives the root object header's address; its messages are followed
//! through every continuation block (v1 and v2 headers), and compact and dense (fractal heap)
//! attribute storage are both searched. Every size and address comes from the file and is
//! checked against the file's length before it is read.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use rust_hdf5::DatatypeMessage;
use rust_hdf5::format::messages::attr_info::AttributeInfoMessage;
use rust_hdf5::format::messages::attribute::AttributeMessage;
use rust_hdf5::format::messages::continuation::ContinuationMessage;
use rust_hdf5::format::messages::{
    MSG_ATTR_INFO, MSG_ATTRIBUTE, MSG_FLAG_SHARED, MSG_OBJ_HEADER_CONTINUATION,
};
use rust_hdf5::format::object_header::{OCHK_SIGNATURE, ObjectHeader};
use rust_hdf5::format::superblock::{SuperblockV0V1, SuperblockV2V3, detect_superblock_version};
use rust_hdf5::format::{BlockReader, FormatContext, FormatError, FormatResult};

/// An attribute's scalar value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Str(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(v) => write!(f, "the integer {v}"),
            Value::Float(v) => write!(f, "the number {v}"),
            Value::Str(s) => write!(f, "the string {s:?}"),
        }
    }
}

impl Value {
    /// Decode a scalar attribute value of the given datatype from its raw bytes.
    pub fn decode(dt: &DatatypeMessage, data: &[u8]) -> Result<Value, String> {
        let scalar = |size: u32| -> Result<&[u8], String> {
            let size = size as usize;
            if data.len() != size {
                return Err(format!(
                    "expected one value of {size} bytes, found {} bytes (not a scalar)",
                    data.len()
                ));
            }
            Ok(data)
        };
        let ordered = |bytes: &[u8], order: &rust_hdf5::ByteOrder| -> [u8; 8] {
            let mut b = [0u8; 8];
            match order {
                rust_hdf5::ByteOrder::LittleEndian => b[..bytes.len()].copy_from_slice(bytes),
                rust_hdf5::ByteOrder::BigEndian => {
                    for (i, &x) in bytes.iter().rev().enumerate() {
                        b[i] = x;
                    }
                }
            }
            b
        };
        match dt {
            DatatypeMessage::FixedPoint {
                size,
                byte_order,
                signed,
                ..
            } if (1..=8).contains(size) => {
                let bytes = scalar(*size)?;
                let mut b = ordered(bytes, byte_order);
                let n = bytes.len();
                if *signed && n < 8 && b[n - 1] & 0x80 != 0 {
                    b[n..].fill(0xff);
                }
                if *signed {
                    Ok(Value::Int(i64::from_le_bytes(b)))
                } else {
                    i64::try_from(u64::from_le_bytes(b))
                        .map(Value::Int)
                        .map_err(|_| "unsigned value does not fit an i64".to_string())
                }
            }
            DatatypeMessage::FloatingPoint {
                size, byte_order, ..
            } if *size == 4 || *size == 8 => {
                let bytes = scalar(*size)?;
                let b = ordered(bytes, byte_order);
                Ok(Value::Float(if *size == 4 {
                    f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                } else {
                    f64::from_le_bytes(b)
                }))
            }
            DatatypeMessage::FixedString { .. } => {
                let end = data.iter().position(|&c| c == 0).unwrap_or(data.len());
                Ok(Value::Str(
                    String::from_utf8_lossy(&data[..end]).trim_end().to_string(),
                ))
            }
            other => Err(format!("unsupported attribute type {other:?}")),
        }
    }
}

/// Reads blocks of a file, never past its end.
struct FileBlocks {
    file: File,
    len: u64,
    base: u64,
}

impl BlockReader for FileBlocks {
    fn read_block(&mut self, offset: u64, len: usize) -> FormatResult<Vec<u8>> {
        let start = self
            .base
            .checked_add(offset)
            .filter(|&s| s < self.len)
            .ok_or_else(|| {
                FormatError::InvalidData(format!("address {offset} is past the end of the file"))
            })?;
        let n = (len as u64).min(self.len - start) as usize;
        let mut buf = vec![0u8; n];
        self.file
            .seek(SeekFrom::Start(start))
            .and_then(|_| self.file.read_exact(&mut buf))
            .map_err(|e| FormatError::InvalidData(e.to_string()))?;
        Ok(buf)
    }
}

const SIGNATURE: [u8; 8] = *b"\x89HDF\r\n\x1a\n";
/// Most continuation blocks followed for one header (a loop in a corrupt file ends here).
const MAX_BLOCKS: usize = 4096;

/// The attribute `key` of the group `group` ("" = root).
pub fn group_attr(path: &Path, group: &str, key: &str) -> Result<Value, String> {
    if !group.is_empty() {
        return Err(format!(
            "numeric attributes are read from the root group and datasets only, not from group '{group}'"
        ));
    }
    let file = File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut r = FileBlocks { file, len, base: 0 };
    // The superblock sits at 0, 512, 1024, 2048, … (after a user block).
    let mut at = 0u64;
    let sb = loop {
        if at >= len {
            return Err("no HDF5 superblock found".into());
        }
        let head = r.read_block(at, 256).map_err(|e| e.to_string())?;
        if head.len() >= 9 && head[..8] == SIGNATURE {
            break head;
        }
        at = if at == 0 { 512 } else { at * 2 };
    };
    let (ctx, root) = match detect_superblock_version(&sb).map_err(|e| e.to_string())? {
        0 | 1 => {
            let s = SuperblockV0V1::decode(&sb).map_err(|e| e.to_string())?;
            r.base = s.base_address;
            let ctx = FormatContext {
                sizeof_addr: s.sizeof_offsets,
                sizeof_size: s.sizeof_lengths,
            };
            (ctx, s.root_symbol_table_entry.obj_header_addr)
        }
        _ => {
            let s = SuperblockV2V3::decode(&sb).map_err(|e| e.to_string())?;
            r.base = s.base_address;
            let ctx = FormatContext {
                sizeof_addr: s.sizeof_offsets,
                sizeof_size: s.sizeof_lengths,
            };
            (ctx, s.root_group_object_header_address)
        }
    };
    let mut attrs = Vec::new();
    let mut ainfo = None;
    for (t, flags, data) in header_messages(&mut r, &ctx, root)? {
        if t == MSG_ATTRIBUTE && flags & MSG_FLAG_SHARED == 0 {
            if let Ok((a, _)) = AttributeMessage::decode(&data, &ctx) {
                attrs.push(a);
            }
        } else if t == MSG_ATTR_INFO {
            ainfo = Some(
                AttributeInfoMessage::decode(&data, &ctx)
                    .map_err(|e| e.to_string())?
                    .0,
            );
        }
    }
    if let Some(a) = attrs.into_iter().find(|a| a.name == key) {
        return Value::decode(&a.datatype, &a.data);
    }
    if let Some(info) = ainfo.filter(AttributeInfoMessage::is_dense) {
        let dense = rust_hdf5::format::dense_attr::read_dense_attributes(&info, &ctx, &mut r)
            .map_err(|e| e.to_string())?;
        if let Some(a) = dense
            .iter()
            .filter_map(|e| e.readable())
            .find(|a| a.name == key)
        {
            return Value::decode(&a.datatype, &a.data);
        }
    }
    Err("attribute not found".into())
}

/// Every message of the object header at `addr`: (type, flags, body), continuation blocks
/// included.
fn header_messages(
    r: &mut FileBlocks,
    ctx: &FormatContext,
    addr: u64,
) -> Result<Vec<(u8, u8, Vec<u8>)>, String> {
    // The first chunk's size is in its prefix; grow the read until it decodes.
    let mut want = 4096usize;
    let (header, modern) = loop {
        let buf = r.read_block(addr, want).map_err(|e| e.to_string())?;
        let modern = buf.starts_with(b"OHDR");
        match ObjectHeader::decode_any(&buf) {
            Ok((h, _)) => break (h, modern),
            Err(FormatError::BufferTooShort { .. }) if buf.len() == want => want *= 4,
            Err(e) => return Err(format!("root object header: {e}")),
        }
    };
    let corder = header.flags & 0x04 != 0;
    let mut out: Vec<(u8, u8, Vec<u8>)> = header
        .messages
        .into_iter()
        .map(|m| (m.msg_type, m.flags, m.data))
        .collect();
    let mut next = 0;
    let mut blocks = 0;
    while next < out.len() {
        if out[next].0 == MSG_OBJ_HEADER_CONTINUATION {
            blocks += 1;
            if blocks > MAX_BLOCKS {
                return Err("too many object header continuation blocks".into());
            }
            let (c, _) =
                ContinuationMessage::decode(&out[next].2, ctx).map_err(|e| e.to_string())?;
            let size = usize::try_from(c.length)
                .ok()
                .filter(|&n| (n as u64) <= r.len)
                .ok_or("continuation block longer than the file")?;
            let block = r.read_block(c.offset, size).map_err(|e| e.to_string())?;
            if block.len() != size {
                return Err("continuation block runs past the end of the file".into());
            }
            out.extend(if modern {
                v2_block(&block, corder)?
            } else {
                v1_block(&block)
            });
        }
        next += 1;
    }
    Ok(out)
}

/// Messages of a version-1 continuation block: type u16, size u16, flags u8, 3 reserved.
fn v1_block(block: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut p = 0;
    while p + 8 <= block.len() {
        let t = u16::from_le_bytes([block[p], block[p + 1]]);
        let size = u16::from_le_bytes([block[p + 2], block[p + 3]]) as usize;
        let flags = block[p + 4];
        p += 8;
        let Some(body) = block.get(p..p + size) else {
            break;
        };
        if let Ok(t) = u8::try_from(t) {
            out.push((t, flags, body.to_vec()));
        }
        p += size;
    }
    out
}

/// Messages of a version-2 "OCHK" block: type u8, size u16, flags u8, [creation order u16].
fn v2_block(block: &[u8], corder: bool) -> Result<Vec<(u8, u8, Vec<u8>)>, String> {
    if !block.starts_with(&OCHK_SIGNATURE) || block.len() < 8 {
        return Err("continuation block without its OCHK signature".into());
    }
    let body = &block[4..block.len() - 4];
    let head = if corder { 6 } else { 4 };
    let mut out = Vec::new();
    let mut p = 0;
    while p + head <= body.len() {
        let t = body[p];
        let size = u16::from_le_bytes([body[p + 1], body[p + 2]]) as usize;
        let flags = body[p + 3];
        p += head;
        let Some(data) = body.get(p..p + size) else {
            break;
        };
        out.push((t, flags, data.to_vec()));
        p += size;
    }
    Ok(out)
}
