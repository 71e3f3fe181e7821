"""In-memory stand-ins for the engine's Storage and the API's token store (reconcile tests)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from appliance.engine.models import BucketInfo, BucketSettings, QuotaType
from appliance.errors import Conflict, Forbidden, NotFound
from provisioning.reconcile import TokenPermissions


class FakeBucket:
    """A bucket with settings and a stored size; counts settings updates."""

    def __init__(self, name: str, settings: BucketSettings, size: int = 0) -> None:
        self.name = name
        self._settings = settings
        self.size = size
        self.updates = 0

    @property
    def settings(self) -> BucketSettings:
        return self._settings

    def update_settings(
        self,
        quota_type: QuotaType | None = None,
        quota_size: int | None = None,
        max_block_size: int | None = None,
        max_block_records: int | None = None,
    ) -> BucketSettings:
        self._settings = self._settings.merged(
            quota_type, quota_size, max_block_size, max_block_records
        )
        self.updates += 1
        return self._settings

    def info(self) -> BucketInfo:
        return BucketInfo(self.name, 0, self.size, 0, 0)


class FakeStorage:
    """Buckets by name; ``refuse`` names buckets whose creation fails (e.g. a replica)."""

    def __init__(self) -> None:
        self.buckets: dict[str, FakeBucket] = {}
        self.refuse: set[str] = set()
        self.removed: list[str] = []

    def bucket_names(self) -> list[str]:
        return sorted(self.buckets)

    def create_bucket(self, name: str, settings: BucketSettings | None = None) -> FakeBucket:
        if name in self.refuse:
            raise Forbidden("Instance is a read-only replica")
        if name in self.buckets:
            raise Conflict(f"Bucket '{name}' already exists")
        bucket = FakeBucket(name, settings or BucketSettings())
        self.buckets[name] = bucket
        return bucket

    def get_bucket(self, name: str) -> FakeBucket:
        if name not in self.buckets:
            raise NotFound(f"Bucket '{name}' is not found")
        return self.buckets[name]

    def remove_bucket(self, name: str) -> None:  # reconcile must never call this
        self.removed.append(name)
        del self.buckets[name]


@dataclass
class FakeToken:
    value: str
    permissions: TokenPermissions
    expires_at: datetime | None
    provisioned: bool = True
    generation: int = 1  # bumped on every replace, like a new created_at


@dataclass
class FakeTokens:
    """A token store that records what provisioning did to it."""

    tokens: dict[str, FakeToken] = field(default_factory=dict)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def provision_token(
        self,
        name: str,
        value: str,
        permissions: TokenPermissions,
        expires_at: datetime | None,
    ) -> None:
        old = self.tokens.get(name)
        generation = old.generation + 1 if old else 1
        self.tokens[name] = FakeToken(value, permissions, expires_at, True, generation)
        self.replaced.append(name)

    def unprovision_token(self, name: str) -> None:
        if name in self.tokens:
            self.tokens[name].provisioned = False

    def provisioned_token_names(self) -> Iterable[str]:
        return [n for n, t in self.tokens.items() if t.provisioned]
