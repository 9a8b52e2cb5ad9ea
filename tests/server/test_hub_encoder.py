"""The hub serialises each distinct desired message once (fan-out to thousands of agents)."""

from __future__ import annotations

from headway.domain.models import ArtifactRef
from headway.domain.spec import ServiceSpec, parse_service_spec
from headway.protocol.messages import ConfigBundle, Desired, DesiredRelease
from headway.server.hub import DesiredEncoder


def spec(start: str = "./app") -> ServiceSpec:
    return parse_service_spec({"name": "web", "run": {"start": [start]}, "health": {"http": {}}})


ARTIFACT = ArtifactRef(digest="sha256:" + "a" * 64, size=10, url="/api/v1/artifacts/a")


def desired(
    generation: int,
    service: ServiceSpec | None,
    number: int | None = 2,
    params: dict[str, str] | None = None,
    serve: bool = True,
    config: ConfigBundle | None = None,
) -> Desired:
    release = (
        None
        if number is None
        else DesiredRelease(number=number, artifact=ARTIFACT, params=params or {"K": "v"}, config=config)
    )
    return Desired(generation=generation, release=release, service=service, serve=serve)


def test_every_message_encodes_exactly_as_pydantic_does() -> None:
    encoder = DesiredEncoder(size=4)
    web, other = spec(), spec("./other")
    bundle = ConfigBundle(digest="sha256:" + "b" * 64, size=5, url="/c/b")
    messages = [
        desired(1, web),
        desired(2, web),
        desired(3, web),  # same as the first but for the generation: from the template
        desired(10**12, web),
        desired(4, web, params={"K": "changed"}),  # same release number, other params
        desired(5, web, params={"K": "changed"}),
        desired(6, web, serve=False),
        desired(7, other),
        desired(8, spec()),  # an equal spec, another object
        desired(9, web, number=None),
        desired(10, None, number=None),
        desired(11, web, config=bundle),
        desired(12, web),  # after evictions
        desired(0, web),
    ]
    for message in messages:
        assert encoder.encode(message) == message.model_dump_json()
        assert encoder.encode(message) == message.model_dump_json()  # twice: from the template


def test_a_template_is_reused_for_the_same_message_at_another_generation() -> None:
    encoder = DesiredEncoder()
    web = spec()
    first = encoder.encode(desired(1, web))
    assert first == desired(1, web).model_dump_json()
    assert len(encoder._templates) == 1
    for generation in range(2, 50):
        assert encoder.encode(desired(generation, web)) == desired(generation, web).model_dump_json()
    assert len(encoder._templates) == 1
