//! Large buffers a layer keeps from one pass for the next to write over.
//!
//! A matrix of [`MAPPED_FROM`] bytes or more is a mapping of its own:
//! glibc's `free` returns it to the kernel, and the next pass's matrix of
//! the same shape is fresh memory again, which the kernel zeroes page by
//! page on first touch (on `single-1e6`, a DiffPool forward and backward
//! pass took about 720 MB of it, and the kernel's `clear_page_erms` was
//! about a fifth of the samples of a profile). A [`Recycler`] keeps such
//! buffers once a pass is done with them, and serves the next pass's
//! matrices of at most their size from them ([`Recycler::take`]), in the
//! layout [`rows::fresh_matrix`] gives. Smaller matrices are left to the
//! allocator, whose heap recycles them already.
//!
//! A buffer it serves holds whatever its last pass left: only for a matrix
//! whose every entry is written before it is read. Results do not depend on
//! where a buffer came from.
//!
//! Memory: a recycler holds at most [`KEPT`] buffers, from the pass that
//! gave them until the next that takes them; a pass that finds none that
//! fits one of its matrices releases them all before it allocates its own,
//! so that a batch of another size does not hold both.
//! [`Recycler::release`] frees them all.

use std::sync::Mutex;

use ndarray::Array2;

use super::rows::{self, MAPPED_FROM};

/// How many buffers a [`Recycler`] keeps at most.
pub(crate) const KEPT: usize = 4;

/// Buffers kept for reuse (see the module's documentation); a clone starts
/// empty, and two recyclers compare equal whatever they hold (what a layer
/// keeps is not part of what it is).
pub(crate) struct Recycler<T> {
    kept: Mutex<Vec<Vec<T>>>,
    /// The fewest bytes of a matrix it serves or keeps: [`MAPPED_FROM`]
    from_bytes: usize,
}

impl<T> Default for Recycler<T> {
    fn default() -> Self {
        Self {
            kept: Mutex::new(Vec::new()),
            from_bytes: MAPPED_FROM,
        }
    }
}

impl<T: Copy + Default> Recycler<T> {
    /// A recycler of matrices of `from_bytes` or more: the tests' way to
    /// reach the layers' recycling on small batches.
    #[cfg(test)]
    pub(crate) fn keeping_from(from_bytes: usize) -> Self {
        Self {
            kept: Mutex::new(Vec::new()),
            from_bytes,
        }
    }

    /// An $R \times C$ matrix in [`rows::fresh_matrix`]'s layout over the
    /// smallest kept buffer that fits it, its entries **unspecified** (what
    /// the buffer's last pass wrote); a buffer fits if it is large enough
    /// and at most twice the size, so that a small matrix does not hold a
    /// large buffer. `None` for a matrix of under [`MAPPED_FROM`] bytes, or
    /// when no kept buffer fits: the kept buffers are then all released, so
    /// that they are not held beside the fresh matrix the caller makes
    /// instead.
    pub(crate) fn take(&self, rows: usize, cols: usize) -> Option<Array2<T>> {
        if rows * cols * std::mem::size_of::<T>() < self.from_bytes {
            return None;
        }
        let len = rows::aligned_buffer_len::<T>(rows, cols);
        let mut kept = self.lock();
        let best = (0..kept.len())
            .filter(|&i| (len..=2 * len).contains(&kept[i].len()))
            .min_by_key(|&i| kept[i].len());
        let Some(i) = best else {
            kept.clear();
            return None;
        };
        let v = kept.swap_remove(i);
        drop(kept);
        // longer than asked: the matrix views its first entries
        Some(rows::aligned_matrix(rows, cols, |_| v))
    }

    /// [`Recycler::take`], or else [`rows::fresh_matrix`] (zeros): for a
    /// matrix whose every entry is written before it is read.
    pub(crate) fn take_or_fresh(&self, rows: usize, cols: usize) -> Array2<T> {
        self.take(rows, cols)
            .unwrap_or_else(|| rows::fresh_matrix(rows, cols))
    }

    /// Keeps `m`'s buffer for a later [`Recycler::take`] if it is one of
    /// [`MAPPED_FROM`] bytes or more and fewer than [`KEPT`] are kept;
    /// otherwise drops it.
    pub(crate) fn keep(&self, m: Array2<T>) {
        if std::mem::size_of_val(m.as_slice_memory_order().unwrap_or(&[])) < self.from_bytes {
            return;
        }
        let (v, _) = m.into_raw_vec_and_offset();
        let mut kept = self.lock();
        if kept.len() < KEPT {
            kept.push(v);
        }
    }

    /// Frees every kept buffer.
    pub(crate) fn release(&self) {
        self.lock().clear();
    }

    /// The bytes of the kept buffers.
    pub(crate) fn kept_bytes(&self) -> usize {
        self.lock()
            .iter()
            .map(|v| std::mem::size_of_val(&v[..]))
            .sum()
    }

    /// The kept buffers; a lock poisoned by a panicking pass is taken over
    /// (the buffers' values are unspecified anyway).
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<T>>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T> Clone for Recycler<T> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl<T> PartialEq for Recycler<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> std::fmt::Debug for Recycler<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.kept.lock().map(|k| k.len()).unwrap_or(0);
        f.debug_struct("Recycler").field("kept", &kept).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of a 16-wide `f32` matrix of `mb` MiB.
    fn rows_of(mb: usize) -> usize {
        (mb << 20) / 64
    }

    #[test]
    fn a_kept_buffer_serves_a_matrix_of_at_most_its_size_in_the_fresh_layout() {
        let r: Recycler<f32> = Recycler::default();
        assert!(r.take(rows_of(40), 16).is_none(), "nothing kept");
        let mut m = rows::fresh_matrix::<f32>(rows_of(40), 16);
        m.fill(7.0);
        let ptr = m.as_ptr();
        r.keep(m);
        assert!(r.kept_bytes() >= 40 << 20);
        let again = r.take(rows_of(36), 16).expect("the kept buffer fits");
        assert_eq!(again.as_ptr(), ptr, "the kept buffer, same alignment");
        assert_eq!(again.dim(), (rows_of(36), 16));
        assert!(again.is_standard_layout());
        assert_eq!(again.as_ptr() as usize % (2 << 20), 0);
        assert!(again.iter().all(|&v| v == 7.0), "its old values");
        assert_eq!(r.kept_bytes(), 0);
        // viewed in part, kept whole again
        r.keep(again);
        assert!(r.take(rows_of(40), 16).is_some());
    }

    #[test]
    fn buffers_too_small_for_a_pass_are_released_and_small_ones_never_kept() {
        let r: Recycler<f32> = Recycler::default();
        r.keep(rows::fresh_matrix(rows_of(34), 16));
        r.keep(rows::fresh_matrix(rows_of(1), 16));
        assert!(r.kept_bytes() >= 34 << 20 && r.kept_bytes() < 37 << 20);
        assert!(r.take(rows_of(64), 16).is_none());
        assert_eq!(r.kept_bytes(), 0, "the 34 MiB buffer released");
        r.keep(rows::fresh_matrix(rows_of(64), 16));
        assert!(
            r.take(rows_of(1), 16).is_none(),
            "a small matrix is not served"
        );
        assert!(
            r.kept_bytes() >= 64 << 20,
            "and the large buffer still kept"
        );
        r.release();
        assert_eq!(r.kept_bytes(), 0);
    }

    #[test]
    fn at_most_kept_buffers_are_kept_and_the_smallest_fit_is_taken() {
        let r: Recycler<f32> = Recycler::default();
        for mb in [48, 40, 56, 64, 72] {
            r.keep(rows::fresh_matrix(rows_of(mb), 16));
        }
        assert_eq!(r.lock().len(), KEPT, "the 72 MiB one dropped");
        let m = r.take(rows_of(44), 16).expect("48 MiB fits");
        assert_eq!(m.dim(), (rows_of(44), 16));
        let mut sizes: Vec<usize> = r.lock().iter().map(|v| v.len() * 4).collect();
        sizes.sort();
        assert_eq!(sizes.len(), 3);
        assert!(sizes[0] < 44 << 20, "the 40 MiB one left: too small");
        assert!(sizes[1] >= 56 << 20, "the 48 MiB one taken: {sizes:?}");
        let clone = r.clone();
        assert_eq!(clone.kept_bytes(), 0, "a clone starts empty");
        assert!(clone == r);
    }
}
