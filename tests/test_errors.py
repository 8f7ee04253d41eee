"""The error shapes: one table each way between HTTP statuses and Anthropic error types."""

from __future__ import annotations

from trio_balancer.errors import STATUS_BY_ERROR_TYPE, error_type_for_status, leaf_exceptions


def test_the_status_and_error_type_maps_agree() -> None:
    """Each error type is answered with a status that maps back to the same type."""
    for error_type, status in STATUS_BY_ERROR_TYPE.items():
        assert error_type_for_status(status) == error_type, (error_type, status)


def test_leaf_exceptions_flattens_nested_groups_in_order() -> None:
    a, b, c = ValueError("a"), KeyError("b"), OSError("c")
    group = BaseExceptionGroup("outer", [a, ExceptionGroup("inner", [b, c])])
    assert leaf_exceptions(group) == [a, b, c] and leaf_exceptions(a) == [a]
