//! Quantized embeddings, exactly as sentence-transformers defines them
//! (`sentence_transformers.util.quantization.quantize_embeddings`, 6.2.0): what vector stores
//! (Qdrant, Weaviate, Milvus, pgvector) keep at a quarter (`int8`, `uint8`) or a thirty-second
//! (`binary`, `ubinary`) of the memory of `float32`.
//!
//! - `binary` / `ubinary`: one bit per dimension, 1 where the value is `> 0` (so `-0.0`, `0.0`
//!   and NaN give 0), packed 8 to a byte with the first dimension in the highest bit and the
//!   last byte padded with zero bits (`np.packbits(emb > 0, axis=-1)`); `ubinary` is that byte,
//!   `binary` that byte minus 128 as an `int8`.
//! - `uint8` / `int8`: per dimension `start = min`, `step = (max - min) / 255` (1 where that is
//!   0), `q = clip(floor((x - start) / step), 0, 255)`, all in `float32` as numpy computes it
//!   (the ranges are cast to `float32` first); `uint8` is `q`, `int8` is `q - 128`. A value
//!   below its dimension's minimum saturates at 0 (-128), one above its maximum at 255 (127).
//!   `min` and `max` come from calibration embeddings (`quantize_embeddings(...,
//!   calibration_embeddings=...)` takes their per-dimension minimum and maximum) or a ranges
//!   file (the `2 × dim` array `ranges=` takes). A NaN component becomes 0 (numpy's own cast of
//!   NaN is undefined; x86 gives 0).
//!
//! Pure: no tensors, no I/O except [`Ranges::read`]. `tests/quantize.rs` compares the bytes with
//! sentence-transformers' own output (committed by `scripts/gen_quantize_fixtures.py`).

use std::path::Path;

/// An output precision, as sentence-transformers names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    /// The embedding as it is.
    Float32,
    /// One signed byte per dimension, from calibration ranges.
    Int8,
    /// One unsigned byte per dimension, from calibration ranges.
    Uint8,
    /// Signs packed 8 to a byte, minus 128, as signed bytes.
    Binary,
    /// Signs packed 8 to a byte.
    Ubinary,
}

impl Precision {
    /// Every precision, in sentence-transformers' order.
    pub const ALL: [Precision; 5] = [
        Precision::Float32,
        Precision::Int8,
        Precision::Uint8,
        Precision::Binary,
        Precision::Ubinary,
    ];

    /// `float32`, `int8`, `uint8`, `binary` or `ubinary`.
    pub fn parse(s: &str) -> Result<Precision, QuantizeError> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| QuantizeError::Precision(s.to_string()))
    }

    /// The name sentence-transformers (and hosted APIs) use.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Float32 => "float32",
            Precision::Int8 => "int8",
            Precision::Uint8 => "uint8",
            Precision::Binary => "binary",
            Precision::Ubinary => "ubinary",
        }
    }

    /// Whether it needs calibration ranges (`int8`, `uint8`).
    pub fn needs_ranges(self) -> bool {
        matches!(self, Precision::Int8 | Precision::Uint8)
    }

    /// Whether its bytes are read as signed (`int8`, `binary`).
    pub fn signed(self) -> bool {
        matches!(self, Precision::Int8 | Precision::Binary)
    }

    /// Bytes per row of `dim` dimensions (`float32`: four per dimension).
    pub fn row_bytes(self, dim: usize) -> usize {
        match self {
            Precision::Float32 => dim * 4,
            Precision::Int8 | Precision::Uint8 => dim,
            Precision::Binary | Precision::Ubinary => dim.div_ceil(8),
        }
    }
}

/// Why embeddings could not be quantized, or ranges not read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantizeError {
    /// Not a precision sentence-transformers knows.
    #[error("`{0}` is not an output precision: use float32, int8, uint8, binary or ubinary")]
    Precision(String),
    /// `int8` / `uint8` without ranges.
    #[error(
        "{0} needs calibration ranges, and this model has none: set model.quantization.\
         ranges_file or model.quantization.calibration_file"
    )]
    NoRanges(&'static str),
    /// Ranges of another width than the embeddings.
    #[error("the calibration ranges have {ranges} dimensions, the embeddings {rows}")]
    Width {
        /// The ranges' width.
        ranges: usize,
        /// The embeddings' width.
        rows: usize,
    },
    /// A ranges file that is not one.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// Nothing to calibrate on.
    #[error("no calibration embeddings")]
    Empty,
}

/// Per-dimension minimum and maximum: sentence-transformers' `ranges`, a `2 × dim` array.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranges {
    /// Each dimension's minimum (`ranges[0]`).
    pub min: Vec<f32>,
    /// Each dimension's maximum (`ranges[1]`).
    pub max: Vec<f32>,
}

impl Ranges {
    /// The per-dimension minimum and maximum of `rows` (`np.min(axis=0)`, `np.max(axis=0)`),
    /// what `quantize_embeddings` computes from `calibration_embeddings`. Every row must have
    /// the first one's width.
    pub fn of(rows: &[Vec<f32>]) -> Result<Ranges, QuantizeError> {
        let first = rows.first().ok_or(QuantizeError::Empty)?;
        let mut r = Ranges {
            min: first.clone(),
            max: first.clone(),
        };
        for row in &rows[1..] {
            if row.len() != r.dim() {
                return Err(QuantizeError::Width {
                    ranges: r.dim(),
                    rows: row.len(),
                });
            }
            for (i, &x) in row.iter().enumerate() {
                // numpy's min/max propagate NaN; so do these comparisons' fall-through.
                if x < r.min[i] || x.is_nan() {
                    r.min[i] = x;
                }
                if x > r.max[i] || x.is_nan() {
                    r.max[i] = x;
                }
            }
        }
        Ok(r)
    }

    /// Dimensions covered.
    pub fn dim(&self) -> usize {
        self.min.len()
    }

    /// Reads a ranges file: JSON `[[min, ...], [max, ...]]` (`ranges.tolist()`) or a NumPy
    /// `.npy` of shape `(2, dim)` in float32 or float64 (`np.save`), row 0 the minimum. Values
    /// are cast to float32 as `quantize_embeddings` casts them. Refuses NaN, infinities and a
    /// minimum above its maximum.
    pub fn read(path: &Path) -> Result<Ranges, QuantizeError> {
        let fail = |message: String| QuantizeError::File {
            path: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        let (min, max) = if bytes.starts_with(b"\x93NUMPY") {
            read_npy(&bytes).map_err(fail)?
        } else {
            let v: Vec<Vec<f64>> = serde_json::from_slice(&bytes).map_err(|e| {
                fail(format!(
                    "not a .npy file nor JSON of two lists of numbers ([[min...], [max...]]): {e}"
                ))
            })?;
            let [min, max]: [Vec<f64>; 2] = v.try_into().map_err(|v: Vec<Vec<f64>>| {
                fail(format!(
                    "has {} rows; ranges have 2 (minimum, maximum)",
                    v.len()
                ))
            })?;
            (min, max)
        };
        if min.len() != max.len() || min.is_empty() {
            return Err(fail(format!(
                "its rows have {} and {} values; they must have the same, non-zero width",
                min.len(),
                max.len()
            )));
        }
        let r = Ranges {
            min: min.iter().map(|&x| x as f32).collect(),
            max: max.iter().map(|&x| x as f32).collect(),
        };
        for i in 0..r.dim() {
            let (lo, hi) = (r.min[i], r.max[i]);
            if !lo.is_finite() || !hi.is_finite() || lo > hi {
                return Err(fail(format!(
                    "dimension {i}: minimum {lo} and maximum {hi} are not a range"
                )));
            }
        }
        Ok(r)
    }

    /// The ranges of the first `d` dimensions.
    pub fn first(&self, d: usize) -> Ranges {
        Ranges {
            min: self.min[..d.min(self.dim())].to_vec(),
            max: self.max[..d.min(self.dim())].to_vec(),
        }
    }

    /// A short, stable digest of the ranges' float32 values (FNV-1a, 64 bits, hex): what
    /// `/info` shows, so a client can tell which ranges its stored vectors were made with.
    pub fn fingerprint(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for x in self.min.iter().chain(&self.max) {
            for b in x.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    }
}

/// The two rows of a `(2, dim)` float32/float64 `.npy` (format 1.0, 2.0 or 3.0, C order).
fn read_npy(bytes: &[u8]) -> Result<(Vec<f64>, Vec<f64>), String> {
    let major = *bytes.get(6).ok_or("a truncated .npy header")?;
    let (len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => (
            u32::from_le_bytes(
                bytes
                    .get(8..12)
                    .ok_or("a truncated .npy header")?
                    .try_into()
                    .expect("four bytes"),
            ) as usize,
            12usize,
        ),
        v => return Err(format!(".npy format version {v} is not one numpy writes")),
    };
    let header = bytes
        .get(start..start + len)
        .ok_or("a truncated .npy header")?;
    let header = String::from_utf8_lossy(header).replace(' ', "");
    let field = |key: &str| -> Option<String> {
        let at = header.find(&format!("'{key}':"))? + key.len() + 3;
        let rest = &header[at..];
        let end = if rest.starts_with('(') {
            rest.find(')')? + 1
        } else {
            rest.find([',', '}'])?
        };
        Some(rest[..end].trim_matches('\'').to_string())
    };
    let descr = field("descr").ok_or("the .npy header has no descr")?;
    let width = match descr.as_str() {
        "<f4" => 4,
        "<f8" => 8,
        other => {
            return Err(format!(
                "dtype {other}: ranges must be little-endian float32 (<f4) or float64 (<f8)"
            ));
        }
    };
    if field("fortran_order").as_deref() != Some("False") {
        return Err("a Fortran-ordered array: save it in C order".into());
    }
    let shape = field("shape").ok_or("the .npy header has no shape")?;
    let dims: Vec<usize> = shape
        .trim_matches(['(', ')'])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("shape {shape}")))
        .collect::<Result<_, _>>()?;
    let [2, dim] = dims[..] else {
        return Err(format!("shape {shape}: ranges are (2, dim)"));
    };
    let data = &bytes[start + len..];
    if data.len() != 2 * dim * width {
        return Err(format!(
            "{} data bytes for shape (2, {dim}) of {width}-byte values",
            data.len()
        ));
    }
    let values: Vec<f64> = data
        .chunks_exact(width)
        .map(|c| {
            if width == 4 {
                f64::from(f32::from_le_bytes(c.try_into().expect("four bytes")))
            } else {
                f64::from_le_bytes(c.try_into().expect("eight bytes"))
            }
        })
        .collect();
    Ok((values[..dim].to_vec(), values[dim..].to_vec()))
}

/// One embedding in `precision`, as bytes: `float32` little-endian, `int8` and `binary` as
/// two's-complement bytes (read them with [`Precision::signed`]), `uint8` and `ubinary` as
/// they are. `ranges` (needed by `int8` / `uint8`) must have the row's width.
pub fn quantize(
    row: &[f32],
    precision: Precision,
    ranges: Option<&Ranges>,
) -> Result<Vec<u8>, QuantizeError> {
    Ok(match precision {
        Precision::Float32 => row.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Precision::Int8 | Precision::Uint8 => {
            let r = ranges.ok_or(QuantizeError::NoRanges(precision.as_str()))?;
            if r.dim() != row.len() {
                return Err(QuantizeError::Width {
                    ranges: r.dim(),
                    rows: row.len(),
                });
            }
            let offset = if precision == Precision::Int8 {
                128.0
            } else {
                0.0
            };
            row.iter()
                .zip(r.min.iter().zip(&r.max))
                .map(|(&x, (&start, &end))| {
                    // float32 throughout, as numpy: (max - min) / 255 in f32, 0 → 1.
                    let width = (end - start) / 255.0;
                    let step = if width == 0.0 { 1.0 } else { width };
                    let q = ((x - start) / step).floor().clamp(0.0, 255.0);
                    if q.is_nan() {
                        0
                    } else {
                        // q - 128 is in -128..=127 for int8: `as i8` is exact there.
                        if precision == Precision::Int8 {
                            ((q - offset) as i8) as u8
                        } else {
                            q as u8
                        }
                    }
                })
                .collect()
        }
        Precision::Binary | Precision::Ubinary => {
            let mut out = vec![0u8; row.len().div_ceil(8)];
            for (i, &x) in row.iter().enumerate() {
                if x > 0.0 {
                    out[i / 8] |= 0x80 >> (i % 8);
                }
            }
            if precision == Precision::Binary {
                // packbits(...) - 128 in uint8 wraps; as int8 that is the byte minus 128.
                out.iter_mut().for_each(|b| *b = b.wrapping_sub(128));
            }
            out
        }
    })
}

/// [`quantize`]'s bytes as the numbers a JSON client sees: signed for `int8` and `binary`.
pub fn values(bytes: &[u8], precision: Precision) -> Vec<i16> {
    bytes
        .iter()
        .map(|&b| {
            if precision.signed() {
                i16::from(b as i8)
            } else {
                i16::from(b)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_packs_the_signs_high_bit_first_and_pads_with_zeros() {
        // 10 dimensions: two bytes, the second padded. > 0 only: -0.0, 0.0 and NaN are 0.
        let row = [1.0, -1.0, 0.0, -0.0, 2.0, f32::NAN, 0.5, 0.1, 3.0, -3.0f32];
        let u = quantize(&row, Precision::Ubinary, None).unwrap();
        assert_eq!(u, vec![0b1000_1011, 0b1000_0000]);
        let b = quantize(&row, Precision::Binary, None).unwrap();
        assert_eq!(values(&b, Precision::Binary), vec![139 - 128, 0]);
        assert_eq!(Precision::Binary.row_bytes(10), 2);
    }

    #[test]
    fn int8_buckets_saturate_outside_the_range() {
        let r = Ranges {
            min: vec![-1.0, 0.0, 5.0],
            max: vec![1.0, 0.0, 5.0 + 255.0],
        };
        // Dimension 1 has no width: step 1 (numpy's np.where(steps == 0, 1, steps)).
        let rows = [
            [-2.0f32, -0.5, 4.0],
            [1.0, 0.25, 5.0 + 254.9],
            [0.0, 300.0, 9.0],
        ];
        let got: Vec<Vec<i16>> = rows
            .iter()
            .map(|r0| {
                values(
                    &quantize(r0, Precision::Uint8, Some(&r)).unwrap(),
                    Precision::Uint8,
                )
            })
            .collect();
        // (1 - -1) / (2 / 255) is 254.99998 in float32: numpy gives 254 too.
        assert_eq!(
            got,
            vec![vec![0, 0, 0], vec![254, 0, 254], vec![127, 255, 4]]
        );
        let signed = values(
            &quantize(&rows[2], Precision::Int8, Some(&r)).unwrap(),
            Precision::Int8,
        );
        assert_eq!(signed, vec![-1, 127, -124]);
        assert_eq!(
            quantize(&[0.0], Precision::Int8, None),
            Err(QuantizeError::NoRanges("int8"))
        );
        assert!(matches!(
            quantize(&[0.0, 1.0], Precision::Int8, Some(&r)),
            Err(QuantizeError::Width { ranges: 3, rows: 2 })
        ));
    }

    #[test]
    fn ranges_are_the_per_dimension_extremes() {
        let r = Ranges::of(&[vec![1.0, -2.0], vec![-1.0, 3.0], vec![0.5, 0.0]]).unwrap();
        assert_eq!((r.min, r.max), (vec![-1.0, -2.0], vec![1.0, 3.0]));
        assert_eq!(Ranges::of(&[]), Err(QuantizeError::Empty));
    }

    #[test]
    fn ranges_files_are_json_or_npy() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("r.json");
        std::fs::write(&json, "[[-1.5, 0], [2, 0.25]]").unwrap();
        let want = Ranges {
            min: vec![-1.5, 0.0],
            max: vec![2.0, 0.25],
        };
        assert_eq!(Ranges::read(&json).unwrap(), want);
        // What np.save(path, np.array([[-1.5, 0], [2, 0.25]], dtype=np.float32)) writes.
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }".to_string();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        npy.extend((header.len() as u16).to_le_bytes());
        npy.extend(header.as_bytes());
        for x in [-1.5f32, 0.0, 2.0, 0.25] {
            npy.extend(x.to_le_bytes());
        }
        let path = dir.path().join("r.npy");
        std::fs::write(&path, &npy).unwrap();
        assert_eq!(Ranges::read(&path).unwrap(), want);
        std::fs::write(&json, "[[1, 0], [0, 1]]").unwrap();
        let e = Ranges::read(&json).unwrap_err().to_string();
        assert!(e.contains("dimension 0: minimum 1 and maximum 0"), "{e}");
        std::fs::write(&json, "[[1, 0]]").unwrap();
        let e = Ranges::read(&json).unwrap_err().to_string();
        assert!(e.contains("has 1 rows"), "{e}");
    }
}
