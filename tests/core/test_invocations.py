import os
import uuid

from lamina.core.invocations import new_request_id


def test_request_ids_are_random_version_4_uuids_in_their_canonical_text() -> None:
    ids = [new_request_id() for _ in range(1000)]  # several refills of the random pool

    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_a_forked_child_does_not_repeat_the_ids_its_parent_will_use() -> None:
    new_request_id()  # the pool now holds bytes the child inherits
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave without running pytest's teardown
        os.write(write, " ".join(new_request_id() for _ in range(5)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)

    parent = {new_request_id() for _ in range(5)}
    assert len(child) == 5 and not child & parent
