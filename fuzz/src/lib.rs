//! Decoding of fuzzer bytes into graphpool inputs, shared by the fuzz targets
//! and by the regression tests that replay their findings.

use arbitrary::{Arbitrary, Unstructured};
use graphpool::{DisjointBatch, PoolError, Segments};
use ndarray::Array2;

/// Raw, unvalidated batch parts: whatever the bytes say.
#[derive(Debug, Arbitrary)]
pub struct RawBatch {
    /// Nodes (kept small).
    pub n: u8,
    /// Features per node.
    pub f: u8,
    /// Graph ids (may be unsorted, out of range, too few or too many).
    pub ids: Vec<u8>,
    /// Declared number of graphs.
    pub num_graphs: u8,
    /// CSR row pointer (may be malformed).
    pub indptr: Vec<u8>,
    /// CSR column indices (may be malformed).
    pub indices: Vec<u8>,
    /// Edge weights (may be non-finite).
    pub data: Vec<f64>,
    /// Features (may be non-finite).
    pub x: Vec<f64>,
}

impl RawBatch {
    /// Tries every checked constructor path; any outcome but a panic is fine.
    pub fn build(&self) -> Result<DisjointBatch<f64>, PoolError> {
        let n = self.n as usize % 48;
        let f = self.f as usize % 6;
        let mut xs = self.x.clone();
        xs.resize(n * f, 0.5);
        let x =
            Array2::from_shape_vec((n, f), xs).map_err(|e| PoolError::InvalidCsr(e.to_string()))?;
        let ids: Vec<usize> = self.ids.iter().map(|&i| i as usize).collect();
        let seg = Segments::from_graph_ids(&ids, self.num_graphs as usize)?;
        DisjointBatch::from_csr_parts(
            x,
            self.indptr.iter().map(|&v| v as usize).collect(),
            self.indices.iter().map(|&v| v as usize).collect(),
            self.data.clone(),
            seg,
        )
    }
}

/// A *valid* small batch drawn from the bytes (so the layers get exercised,
/// not only the validation): graph sizes, features and symmetric edges.
#[derive(Debug)]
pub struct ValidBatch(pub DisjointBatch<f64>);

impl<'a> Arbitrary<'a> for ValidBatch {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let graphs = u.int_in_range(0..=5usize)?;
        let f = u.int_in_range(1..=4usize)?;
        let mut sizes = Vec::with_capacity(graphs);
        for _ in 0..graphs {
            sizes.push(u.int_in_range(0..=9usize)?);
        }
        let seg = Segments::from_sizes(&sizes);
        let n = seg.num_nodes();
        let mut xs = Vec::with_capacity(n * f);
        for _ in 0..n * f {
            // finite features of any magnitude, including huge and tiny ones
            let v: f64 = u.arbitrary()?;
            xs.push(if v.is_finite() { v } else { 0.0 });
        }
        let x =
            Array2::from_shape_vec((n, f), xs).map_err(|_| arbitrary::Error::IncorrectFormat)?;
        let mut tri = sprs::TriMat::new((n, n));
        for r in seg.ranges() {
            for i in r.clone() {
                for j in i..r.end {
                    if u.ratio(1u8, 3u8)? {
                        let w: f64 = u.arbitrary()?;
                        let w = if w.is_finite() { w } else { 1.0 };
                        tri.add_triplet(i, j, w);
                        if i != j {
                            tri.add_triplet(j, i, w);
                        }
                    }
                }
            }
        }
        DisjointBatch::new(x, tri.to_csr(), seg)
            .map(ValidBatch)
            .map_err(|_| arbitrary::Error::IncorrectFormat)
    }
}
