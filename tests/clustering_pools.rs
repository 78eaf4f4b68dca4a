mod common;

use common::assert_gradients;
use graphpool::layers::{AsymCheegerCutPool, JustBalancePool, DMoNPool, DMoNVariant, MinCutPool, MinCutVariant};
use graphpool::nn::Activation;
use graphpool::proptest::{batches, BatchShape};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn gradients_match_finite_differences(b in batches(BatchShape { graphs: 1..=3, nodes: 0..=5, features: 1..=3, ..BatchShape::default() })) {
        let f = b.num_features();
        assert_gradients(&MinCutPool::<f64>::new(f, 3, &[4], Activation::Tanh, 1).unwrap(), &b);
        assert_gradients(&MinCutPool::<f64>::new(f, 2, &[], Activation::Relu, 2).unwrap().with_variant(MinCutVariant::Pyg), &b);
        assert_gradients(&DMoNPool::<f64>::new(f, 3, &[4], Activation::Tanh, 0.3, 1).unwrap(), &b);
        assert_gradients(&DMoNPool::<f64>::new(f, 2, &[3], Activation::Linear, 0.3, 1).unwrap().with_variant(DMoNVariant::Pyg), &b);
        assert_gradients(&JustBalancePool::<f64>::new(f, 3, &[4], Activation::Tanh, true, 1).unwrap(), &b);
        assert_gradients(&JustBalancePool::<f64>::new(f, 2, &[], Activation::Tanh, false, 1).unwrap(), &b);
        assert_gradients(&AsymCheegerCutPool::<f64>::new(f, 3, &[4], Activation::Tanh, 0.7, 1.3, 1).unwrap(), &b);
    }
}
