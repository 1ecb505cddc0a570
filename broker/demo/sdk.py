"""Where the demo page loads the vendor's browser SDK from.

The SDK (``@getalternative/partner-sdk``) is UNLICENSED: it must never be copied into
this repository or its wheel. The page therefore loads it at run time, by default from
a public npm CDN at a pinned version with Subresource Integrity, or from a copy the
developer points ``--sdk-url`` at (a URL, or a local file the demo site then serves,
for machines without internet access).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from yarl import URL

SDK_PACKAGE = "@getalternative/partner-sdk"
SDK_VERSION = "0.1.7"
# The package's ESM build (package.json "exports" → "import"): one self-contained
# module, React and its other dependencies bundled, so a browser imports it as is.
SDK_ENTRY = "dist/index.mjs"
PINNED_SDK_URL = f"https://cdn.jsdelivr.net/npm/{SDK_PACKAGE}@{SDK_VERSION}/{SDK_ENTRY}"
# sha384 of that file as npm ships it (the CDN serves npm's bytes unchanged). The
# browser refuses a CDN answer that differs, so a tampered CDN cannot run code on a
# payment page. The browser test checks this value against the npm tarball.
PINNED_SDK_INTEGRITY = "sha384-YkhsjRIjuuQYzLDUePqiMjO0Aqz+DXVs8fHVFgm+PTporXw+vU921XOsnS4WRx+K"
# Where the demo site serves a local copy given as --sdk-url PATH.
LOCAL_SDK_PATH = "/sdk/partner-sdk.mjs"


@dataclass(frozen=True, slots=True)
class SdkSource:
    """What the page's import map names: a URL, its integrity, or a local file."""

    url: str
    integrity: str | None = None
    local_file: Path | None = None  # served by the demo site at LOCAL_SDK_PATH

    @classmethod
    def pinned(cls) -> SdkSource:
        return cls(url=PINNED_SDK_URL, integrity=PINNED_SDK_INTEGRITY)


def sdk_source(value: str) -> SdkSource:
    """``--sdk-url``: an http(s) URL of the SDK's ESM file, or a path to a local copy
    (e.g. ``node_modules/@getalternative/partner-sdk/dist/index.mjs``).

    No integrity is pinned for either: the developer chose that copy, and its bytes
    may legitimately differ (another build, a patched file).
    """
    if value.startswith(("http://", "https://")):
        url = URL(value)
        if not url.host or url.user or url.password:
            raise argparse.ArgumentTypeError(f"{value!r} is not a usable http(s) URL")
        return SdkSource(url=str(url))
    path = Path(value).expanduser()
    if path.is_dir():  # the package folder, as npm installs it
        path = path / SDK_ENTRY
    if not path.is_file():
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither an http(s) URL nor an existing file (want the SDK's"
            f" {SDK_ENTRY}, e.g. from `npm install {SDK_PACKAGE}@{SDK_VERSION}`)"
        )
    return SdkSource(url=LOCAL_SDK_PATH, local_file=path.resolve())
