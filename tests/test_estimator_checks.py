"""scikit-learn's own estimator checks, one instance per solver."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_wsvd import WeightedTruncatedSVD
from sklearn_wsvd._solvers import SOLVERS

INSTANCES = [WeightedTruncatedSVD(solver=s, dtype="float64", random_state=0) for s in SOLVERS]
# The default (float32) instance as well.
INSTANCES.append(WeightedTruncatedSVD())


def expected_failed_checks(estimator):
    failures = {
        "check_sample_weights_shape": (
            "the check expects sample_weight of shape (n_samples, n_features) to be "
            "rejected, but element-wise weights of that shape are this estimator's purpose"
        )
    }
    if estimator.solver == "svd":
        reason = "solver='svd' ignores sample_weight by design (the unweighted baseline)"
        failures["check_sample_weight_equivalence_on_dense_data"] = reason
        failures["check_sample_weight_equivalence_on_sparse_data"] = reason
    if estimator.dtype == "float32":
        reason = (
            "float32 solve: weighted and repeated fits agree to ~1e-5, not to the check's "
            "rtol=1e-7 (the float64 instances pass it)"
        )
        failures["check_sample_weight_equivalence_on_dense_data"] = reason
        failures["check_sample_weight_equivalence_on_sparse_data"] = reason
    return failures


@parametrize_with_checks(INSTANCES, expected_failed_checks=expected_failed_checks)
def test_sklearn_compatible(estimator, check):
    check(estimator)
