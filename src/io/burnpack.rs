//! Canonical burnpack bytes for optimizer state.
//!
//! burn writes an optimizer record's tensors in the iteration order of a hash map keyed by
//! parameter id, so the same state gives different `optimizer.bpk` bytes on every run (the
//! metadata is a name-sorted map, but each tensor's `data_offsets` and the data section follow
//! the hash order). [`canonical`] rewrites such a container with the tensor data laid out in
//! the metadata's name order (`"{param_id}.{field}"`, sorted as strings), which is what burn's
//! own writer produces for a name-sorted tensor list. Only offsets move: names, dtypes,
//! shapes, parameter ids, scalars and data bytes are kept, so burn reads the result exactly as
//! it read the original.
//!
//! The container is `"NRUB"`, a u16 version, a u32 metadata length (little endian), the CBOR
//! metadata, zero padding to a 256-byte boundary, then each tensor's bytes at its 256-aligned
//! offset relative to that boundary.

/// Header: magic (4), version (2), metadata length (4).
const HEADER: usize = 10;
/// Tensor data alignment (burnpack's `TENSOR_ALIGNMENT`).
const ALIGN: usize = 256;
const MAGIC: [u8; 4] = *b"NRUB";

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// One CBOR data item. Unsigned integers are decoded (offsets are rewritten); every other
/// non-container item is kept as its exact encoded bytes.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Uint(u64),
    Raw(Vec<u8>),
    Array(Vec<Item>),
    Map(Vec<(Item, Item)>),
    Tag(u64, Box<Item>),
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .i
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or("metadata ends inside an item")?;
        let s = &self.b[self.i..end];
        self.i = end;
        Ok(s)
    }

    /// The argument of a head with additional information `ai`.
    fn arg(&mut self, ai: u8) -> Result<u64, String> {
        Ok(match ai {
            0..=23 => u64::from(ai),
            24 => u64::from(self.take(1)?[0]),
            25 => u64::from(u16::from_be_bytes(self.take(2)?.try_into().expect("2"))),
            26 => u64::from(u32::from_be_bytes(self.take(4)?.try_into().expect("4"))),
            27 => u64::from_be_bytes(self.take(8)?.try_into().expect("8")),
            _ => return Err(format!("unsupported CBOR length code {ai}")),
        })
    }

    fn item(&mut self) -> Result<Item, String> {
        self.depth += 1;
        if self.depth > 64 {
            return Err("metadata nested too deeply".into());
        }
        let start = self.i;
        let head = self.take(1)?[0];
        let (major, ai) = (head >> 5, head & 0x1f);
        let it = match major {
            0 => Item::Uint(self.arg(ai)?),
            1 => {
                self.arg(ai)?;
                Item::Raw(self.b[start..self.i].to_vec())
            }
            2 | 3 => {
                let n = usize::try_from(self.arg(ai)?).map_err(|e| e.to_string())?;
                self.take(n)?;
                Item::Raw(self.b[start..self.i].to_vec())
            }
            4 | 5 => {
                let n = usize::try_from(self.arg(ai)?).map_err(|e| e.to_string())?;
                // Each element takes at least one byte: a count beyond the bytes left is corrupt.
                if n > self.b.len() - self.i {
                    return Err("container count exceeds the metadata".into());
                }
                if major == 4 {
                    let mut v = Vec::with_capacity(n);
                    for _ in 0..n {
                        v.push(self.item()?);
                    }
                    Item::Array(v)
                } else {
                    let mut v = Vec::with_capacity(n);
                    for _ in 0..n {
                        let k = self.item()?;
                        v.push((k, self.item()?));
                    }
                    Item::Map(v)
                }
            }
            6 => {
                let tag = self.arg(ai)?;
                Item::Tag(tag, Box::new(self.item()?))
            }
            _ => {
                // Simple values and floats: 0–23 inline, 24 one byte, 25/26/27 half/single/double.
                match ai {
                    0..=23 => {}
                    24 => {
                        self.take(1)?;
                    }
                    25 => {
                        self.take(2)?;
                    }
                    26 => {
                        self.take(4)?;
                    }
                    27 => {
                        self.take(8)?;
                    }
                    _ => return Err(format!("unsupported CBOR simple/float code {ai}")),
                }
                Item::Raw(self.b[start..self.i].to_vec())
            }
        };
        self.depth -= 1;
        Ok(it)
    }
}

/// A head with the shortest argument encoding (as ciborium writes them).
fn head(out: &mut Vec<u8>, major: u8, v: u64) {
    let m = major << 5;
    if v < 24 {
        out.push(m | v as u8);
    } else if v <= u64::from(u8::MAX) {
        out.extend([m | 24, v as u8]);
    } else if v <= u64::from(u16::MAX) {
        out.push(m | 25);
        out.extend((v as u16).to_be_bytes());
    } else if v <= u64::from(u32::MAX) {
        out.push(m | 26);
        out.extend((v as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend(v.to_be_bytes());
    }
}

fn encode(it: &Item, out: &mut Vec<u8>) {
    match it {
        Item::Uint(v) => head(out, 0, *v),
        Item::Raw(b) => out.extend_from_slice(b),
        Item::Array(v) => {
            head(out, 4, v.len() as u64);
            for x in v {
                encode(x, out);
            }
        }
        Item::Map(v) => {
            head(out, 5, v.len() as u64);
            for (k, x) in v {
                encode(k, out);
                encode(x, out);
            }
        }
        Item::Tag(t, x) => {
            head(out, 6, *t);
            encode(x, out);
        }
    }
}

/// The encoded text string `s` (a map key).
fn text(s: &str) -> Item {
    let mut b = Vec::new();
    head(&mut b, 3, s.len() as u64);
    b.extend_from_slice(s.as_bytes());
    Item::Raw(b)
}

fn get_mut<'a>(map: &'a mut [(Item, Item)], key: &Item) -> Option<&'a mut Item> {
    map.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// `bytes` (a burnpack container) with its tensor data in the metadata's (name) order.
/// Errors say what in the container was not as burn writes it.
pub fn canonical(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.len() < HEADER || bytes[..4] != MAGIC {
        return Err("not a burnpack container".into());
    }
    let meta_len = u32::from_le_bytes(bytes[6..10].try_into().expect("4")) as usize;
    let meta_end = HEADER
        .checked_add(meta_len)
        .filter(|&e| e <= bytes.len())
        .ok_or("metadata length exceeds the file")?;
    let mut p = Parser {
        b: &bytes[HEADER..meta_end],
        i: 0,
        depth: 0,
    };
    let mut meta = p.item()?;
    if p.i != meta_len {
        return Err("bytes after the metadata item".into());
    }
    let data_start = align(meta_end);
    let Item::Map(top) = &mut meta else {
        return Err("metadata is not a map".into());
    };
    let Some(Item::Map(tensors)) = get_mut(top, &text("tensors")) else {
        return Err("metadata has no tensor map".into());
    };
    let key = text("data_offsets");
    let mut blocks: Vec<&[u8]> = Vec::with_capacity(tensors.len());
    let mut cur = 0usize;
    for (_, desc) in tensors.iter_mut() {
        let Item::Map(desc) = desc else {
            return Err("tensor descriptor is not a map".into());
        };
        let Some(Item::Array(off)) = get_mut(desc, &key) else {
            return Err("tensor descriptor has no data_offsets".into());
        };
        let [Item::Uint(a), Item::Uint(b)] = off.as_mut_slice() else {
            return Err("data_offsets is not two unsigned integers".into());
        };
        let (lo, hi) = (usize::try_from(*a), usize::try_from(*b));
        let (Ok(lo), Ok(hi)) = (lo, hi) else {
            return Err("data_offsets out of range".into());
        };
        let block = (lo <= hi)
            .then(|| data_start.checked_add(lo).zip(data_start.checked_add(hi)))
            .flatten()
            .filter(|&(_, e)| e <= bytes.len())
            .map(|(s, e)| &bytes[s..e])
            .ok_or("data_offsets outside the file")?;
        let start = align(cur);
        *a = start as u64;
        *b = (start + block.len()) as u64;
        cur = start + block.len();
        blocks.push(block);
    }
    let mut m = Vec::with_capacity(meta_len);
    encode(&meta, &mut m);
    let new_meta_len = u32::try_from(m.len()).map_err(|_| "metadata too long")?;
    let new_start = align(HEADER + m.len());
    let mut out = Vec::with_capacity(new_start + cur);
    out.extend_from_slice(&bytes[..6]);
    out.extend(new_meta_len.to_le_bytes());
    out.extend_from_slice(&m);
    out.resize(new_start, 0);
    for block in blocks {
        out.resize(new_start + align(out.len() - new_start), 0);
        out.extend_from_slice(block);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(it: &Item) -> Vec<u8> {
        let mut v = Vec::new();
        encode(it, &mut v);
        v
    }

    #[test]
    fn heads_are_shortest_and_round_trip() {
        for v in [
            0u64,
            23,
            24,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64,
            1 << 40,
        ] {
            let b = enc(&Item::Uint(v));
            let n = match v {
                0..=23 => 1,
                24..=255 => 2,
                256..=65_535 => 3,
                65_536..=0xFFFF_FFFF => 5,
                _ => 9,
            };
            assert_eq!(b.len(), n, "{v}");
            let mut p = Parser {
                b: &b,
                i: 0,
                depth: 0,
            };
            assert_eq!(p.item().unwrap(), Item::Uint(v));
        }
    }

    /// A two-tensor container written in "hash" order (b before a) becomes the one written in
    /// name order (a before b), with the same data under each name.
    #[test]
    fn reorders_data_into_name_order() {
        let desc = |lo: u64, hi: u64| {
            Item::Map(vec![
                (text("dtype"), text("U8")),
                (
                    text("data_offsets"),
                    Item::Array(vec![Item::Uint(lo), Item::Uint(hi)]),
                ),
            ])
        };
        let pack = |a: (u64, u64), b: (u64, u64), first_a: bool| {
            let meta = Item::Map(vec![(
                text("tensors"),
                Item::Map(vec![
                    (text("a"), desc(a.0, a.1)),
                    (text("b"), desc(b.0, b.1)),
                ]),
            )]);
            let m = enc(&meta);
            let mut out = b"NRUB\x01\x00".to_vec();
            out.extend((m.len() as u32).to_le_bytes());
            out.extend(&m);
            let ds = align(out.len());
            out.resize(ds, 0);
            let (x, y): (&[u8], &[u8]) = if first_a {
                (&[1, 2, 3], &[9; 300])
            } else {
                (&[9; 300], &[1, 2, 3])
            };
            out.extend(x);
            out.resize(ds + align(x.len()), 0);
            out.extend(y);
            out
        };
        let hashed = pack((512, 515), (0, 300), false);
        let sorted = pack((0, 3), (256, 556), true);
        assert_ne!(hashed, sorted);
        assert_eq!(canonical(&hashed).unwrap(), sorted);
        assert_eq!(canonical(&sorted).unwrap(), sorted);
        assert!(canonical(&hashed[..hashed.len() - 1]).is_err());
        assert!(canonical(b"NRUB").is_err());
    }
}
