//! The 32-value types' weights as the CPU kernels store them: block `b` of four adjacent
//! output columns (features) in one *group*, each field of the four blocks side by side.
//! The four columns' packed values are 64 contiguous bytes (Q8_0: twice that), so a 512-bit
//! kernel unpacks four columns with one load, mask and shift; 5-bit types keep their high bits as
//! two 64-bit masks (values 0-15 of the four columns, then values 16-31) and every type its
//! four scales together. Lossless: each group holds exactly its four blocks' bytes, and
//! [`Grouped::block`] gives a block back.
//!
//! A matrix is `[n / 4 (rounded up), kb]` groups: group `g`'s blocks in K order, then group
//! `g + 1`'s. A last partial group repeats its last column (computed, never stored: kernels
//! store columns below `n` only).

use half::f16;

use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QK};

/// Columns per group.
pub const GROUP: usize = 4;

/// A 32-value block type stored in groups of four columns.
pub trait Grouped: Copy + Default + Send + Sync + 'static {
    type Group: Copy + Default + Send + Sync + 'static;
    /// Four columns' block `b`.
    fn group(blocks: [Self; GROUP]) -> Self::Group;
    /// Column `j`'s block back.
    fn block(g: &Self::Group, j: usize) -> Self;
}

/// Q4_0 x 4: 72 bytes.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct GroupQ4_0 {
    /// Column `j`'s 16 bytes: value `i` in the low nibble of byte `i`, `i + 16` in its high one.
    pub qs: [[u8; QK / 2]; GROUP],
    pub d: [f16; GROUP],
}

/// Q4_1 x 4: 80 bytes.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct GroupQ4_1 {
    pub qs: [[u8; QK / 2]; GROUP],
    pub d: [f16; GROUP],
    pub m: [f16; GROUP],
}

/// Q5_0 x 4: 88 bytes.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct GroupQ5_0 {
    pub qs: [[u8; QK / 2]; GROUP],
    /// Bits `16j..16j + 16`: column `j`'s high bits of values 0-15; `qh_hi`: of values 16-31.
    pub qh_lo: u64,
    pub qh_hi: u64,
    pub d: [f16; GROUP],
}

/// Q5_1 x 4: 96 bytes.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct GroupQ5_1 {
    pub qs: [[u8; QK / 2]; GROUP],
    pub qh_lo: u64,
    pub qh_hi: u64,
    pub d: [f16; GROUP],
    pub m: [f16; GROUP],
}

/// Q8_0 x 4: 136 bytes.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct GroupQ8_0 {
    /// Column `j`'s values 0-15; `hi`: its values 16-31.
    pub lo: [[i8; QK / 2]; GROUP],
    pub hi: [[i8; QK / 2]; GROUP],
    pub d: [f16; GROUP],
}

/// The four columns' high-bit words split into the two masks.
fn split_high_bits(qh: [[u8; 4]; GROUP]) -> (u64, u64) {
    qh.iter().enumerate().fold((0, 0), |(lo, hi), (j, q)| {
        let w = u32::from_le_bytes(*q) as u64;
        (lo | (w & 0xFFFF) << (16 * j), hi | (w >> 16) << (16 * j))
    })
}

/// Column `j`'s high-bit word from the two masks.
fn join_high_bits(lo: u64, hi: u64, j: usize) -> [u8; 4] {
    let w = (lo >> (16 * j)) & 0xFFFF | ((hi >> (16 * j)) & 0xFFFF) << 16;
    (w as u32).to_le_bytes()
}

impl Grouped for BlockQ4_0 {
    type Group = GroupQ4_0;
    fn group(b: [Self; GROUP]) -> GroupQ4_0 {
        GroupQ4_0 {
            qs: b.map(|b| b.qs),
            d: b.map(|b| b.d),
        }
    }
    fn block(g: &GroupQ4_0, j: usize) -> Self {
        Self {
            d: g.d[j],
            qs: g.qs[j],
        }
    }
}

impl Grouped for BlockQ4_1 {
    type Group = GroupQ4_1;
    fn group(b: [Self; GROUP]) -> GroupQ4_1 {
        GroupQ4_1 {
            qs: b.map(|b| b.qs),
            d: b.map(|b| b.d),
            m: b.map(|b| b.m),
        }
    }
    fn block(g: &GroupQ4_1, j: usize) -> Self {
        Self {
            d: g.d[j],
            m: g.m[j],
            qs: g.qs[j],
        }
    }
}

impl Grouped for BlockQ5_0 {
    type Group = GroupQ5_0;
    fn group(b: [Self; GROUP]) -> GroupQ5_0 {
        let (qh_lo, qh_hi) = split_high_bits(b.map(|b| b.qh));
        GroupQ5_0 {
            qs: b.map(|b| b.qs),
            qh_lo,
            qh_hi,
            d: b.map(|b| b.d),
        }
    }
    fn block(g: &GroupQ5_0, j: usize) -> Self {
        Self {
            d: g.d[j],
            qh: join_high_bits(g.qh_lo, g.qh_hi, j),
            qs: g.qs[j],
        }
    }
}

impl Grouped for BlockQ5_1 {
    type Group = GroupQ5_1;
    fn group(b: [Self; GROUP]) -> GroupQ5_1 {
        let (qh_lo, qh_hi) = split_high_bits(b.map(|b| b.qh));
        GroupQ5_1 {
            qs: b.map(|b| b.qs),
            qh_lo,
            qh_hi,
            d: b.map(|b| b.d),
            m: b.map(|b| b.m),
        }
    }
    fn block(g: &GroupQ5_1, j: usize) -> Self {
        Self {
            d: g.d[j],
            m: g.m[j],
            qh: join_high_bits(g.qh_lo, g.qh_hi, j),
            qs: g.qs[j],
        }
    }
}

impl Grouped for BlockQ8_0 {
    type Group = GroupQ8_0;
    fn group(b: [Self; GROUP]) -> GroupQ8_0 {
        let half =
            |b: &BlockQ8_0, h: usize| -> [i8; QK / 2] { std::array::from_fn(|i| b.qs[16 * h + i]) };
        GroupQ8_0 {
            lo: b.map(|b| half(&b, 0)),
            hi: b.map(|b| half(&b, 1)),
            d: b.map(|b| b.d),
        }
    }
    fn block(g: &GroupQ8_0, j: usize) -> Self {
        Self {
            d: g.d[j],
            qs: std::array::from_fn(|i| if i < 16 { g.lo[j][i] } else { g.hi[j][i - 16] }),
        }
    }
}

/// GGUF's row-major `[n, kb]` blocks as `[n / 4 (rounded up), kb]` groups.
pub(crate) fn group_columns<W: Grouped>(rows: &[W], n: usize, kb: usize) -> Vec<W::Group> {
    let mut out = Vec::with_capacity(n.div_ceil(GROUP) * kb);
    for g in 0..n.div_ceil(GROUP) {
        for b in 0..kb {
            out.push(W::group(std::array::from_fn(|j| {
                rows[(g * GROUP + j).min(n - 1) * kb + b]
            })));
        }
    }
    out
}

/// Column `c`'s `kb` blocks out of the groups.
pub(crate) fn column_blocks<W: Grouped>(groups: &[W::Group], kb: usize, c: usize) -> Vec<W> {
    (0..kb)
        .map(|b| W::block(&groups[c / GROUP * kb + b], c % GROUP))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<W: Grouped + std::fmt::Debug>(make: impl Fn(usize) -> W) {
        let (n, kb) = (7, 3);
        let rows: Vec<W> = (0..n * kb).map(&make).collect();
        let groups = group_columns(&rows, n, kb);
        assert_eq!(groups.len(), 2 * kb);
        for c in 0..n {
            let back = column_blocks::<W>(&groups, kb, c);
            for (b, blk) in back.iter().enumerate() {
                assert_eq!(format!("{blk:?}"), format!("{:?}", rows[c * kb + b]));
            }
        }
    }

    #[test]
    fn groups_give_every_block_back() {
        let byte = |i: usize, j: usize| (i * 37 + j * 11 + 5) as u8;
        let h = |i: usize| f16::from_f32(i as f32 * 0.25 - 3.0);
        round_trip(|i| BlockQ4_0 {
            d: h(i),
            qs: std::array::from_fn(|j| byte(i, j)),
        });
        round_trip(|i| BlockQ4_1 {
            d: h(i),
            m: h(i + 1),
            qs: std::array::from_fn(|j| byte(i, j)),
        });
        round_trip(|i| BlockQ5_0 {
            d: h(i),
            qh: std::array::from_fn(|j| byte(i, j + 40)),
            qs: std::array::from_fn(|j| byte(i, j)),
        });
        round_trip(|i| BlockQ5_1 {
            d: h(i),
            m: h(i + 2),
            qh: std::array::from_fn(|j| byte(i, j + 40)),
            qs: std::array::from_fn(|j| byte(i, j)),
        });
        round_trip(|i| BlockQ8_0 {
            d: h(i),
            qs: std::array::from_fn(|j| byte(i, j) as i8),
        });
    }

    #[test]
    fn a_group_is_its_four_blocks_bytes() {
        use std::mem::size_of;
        assert_eq!(size_of::<GroupQ4_0>(), 4 * size_of::<BlockQ4_0>());
        assert_eq!(size_of::<GroupQ4_1>(), 4 * size_of::<BlockQ4_1>());
        assert_eq!(size_of::<GroupQ5_0>(), 4 * size_of::<BlockQ5_0>());
        assert_eq!(size_of::<GroupQ5_1>(), 4 * size_of::<BlockQ5_1>());
        assert_eq!(size_of::<GroupQ8_0>(), 4 * size_of::<BlockQ8_0>());
    }
}
