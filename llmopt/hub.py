"""The Hugging Face Hub, asked once and quickly: does this repository exist, may we read it, and is the Hub there.

huggingface_hub retries an unreachable Hub for about 30 s before it gives up, and prints a line per retry. One plain
request with a short timeout answers the same question in seconds, so that a missing network, a typo or a gated
model is one clear line that says what to do instead.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field

PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class HubAnswer:
    status: str  # "ok", "missing", "denied" (gated, private, or no such repository without a token), "unreachable"
    detail: str = ""
    files: list[str] = field(default_factory=list)  # the repository's files, when listed


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def probe(repo_id: str, kind: str = "model", timeout_s: float = PROBE_TIMEOUT_S) -> HubAnswer:
    """One GET of the repository's metadata, no retries."""
    from huggingface_hub import get_token

    url = f"{endpoint()}/api/{kind}s/{repo_id}"
    headers = {"User-Agent": "llmopt"}
    token = get_token()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as response:
            info = json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return HubAnswer("missing", f"HTTP 404 from {url}")
        if exc.code in (401, 403):
            return HubAnswer("denied", f"HTTP {exc.code} from {url}")
        return HubAnswer("unreachable", f"HTTP {exc.code} from {url}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return HubAnswer("unreachable", f"{endpoint()}: {reason}")
    files = [s.get("rfilename", "") for s in info.get("siblings") or [] if isinstance(s, dict)]
    if info.get("gated"):
        # The Hub lists a gated repository to anyone; whether its files may be read shows on the files themselves.
        check = urllib.request.Request(f"{endpoint()}/{repo_id}/resolve/main/config.json", headers=headers, method="HEAD")
        try:
            with urllib.request.urlopen(check, timeout=timeout_s):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                return HubAnswer("denied", f"{repo_id} is gated (HTTP {exc.code} for its files)")
        except (urllib.error.URLError, OSError) as exc:
            return HubAnswer("unreachable", f"{endpoint()}: {getattr(exc, 'reason', exc)}")
    return HubAnswer("ok", files=files)
