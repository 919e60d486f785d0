import pytest

from sam.research.moe import ExpertSpecialization, MemoryConfig, MemoryType
from sam.errors import InvalidInputError


pytestmark = pytest.mark.usefixtures("one_thread")


def test_defaults_follow_the_notes():
    c = MemoryConfig()
    assert (c.short_term_capacity, c.long_term_capacity, c.top_k_retrieve) == (100, 10000, 5)
    assert c.similarity_threshold == 0.7 and c.enable_pruning and not c.use_faiss


@pytest.mark.parametrize("field", ["short_term_capacity", "long_term_capacity", "episodic_capacity", "semantic_capacity"])
def test_zero_capacity_is_rejected(field):
    with pytest.raises(InvalidInputError, match=field):
        MemoryConfig(**{field: 0})


@pytest.mark.parametrize("kw", [dict(top_k_retrieve=0), dict(similarity_threshold=1.5), dict(memory_dim=30, num_heads=4),
                                dict(prune_interval=-1)])
def test_bad_values_are_rejected(kw):
    with pytest.raises(InvalidInputError):
        MemoryConfig(**kw)


def test_dict_round_trip_ignores_unknown_keys():
    c = MemoryConfig(top_k_retrieve=3, use_faiss=True)
    d = c.to_dict() | {"not_a_field": 1}
    assert MemoryConfig.from_dict(d) == c


def test_enums_are_strings():
    assert MemoryType("episodic") is MemoryType.EPISODIC and ExpertSpecialization("vision").value == "vision"
