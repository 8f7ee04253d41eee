"""Build tests/data/token_corpus.jsonl: texts with their token counts from Claude's public tokenizer.

The corpus lets tests measure the error of trio_balancer.protocol.tokens (our estimator for providers
that report no usage). The tokenizer is the one Anthropic published in its Python SDK up to
0.38 (`anthropic/tokenizer.json`); current models tokenize differently, so the numbers are a
proxy, but a real one. Run by hand (needs the registry once):

    python3 -m venv /tmp/tok && /tmp/tok/bin/pip install tokenizers
    /tmp/tok/bin/pip download --no-deps anthropic==0.34.2 -d /tmp/tok
    (cd /tmp/tok && unzip -o anthropic-0.34.2-py3-none-any.whl anthropic/tokenizer.json)
    /tmp/tok/bin/python bench/token_corpus.py /tmp/tok/anthropic/tokenizer.json
"""

from __future__ import annotations

import json
import random
import sys
import sysconfig
from pathlib import Path

from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "token_corpus.jsonl"
CHUNK = 1200

JAPANESE = (
    "ストリーミング応答では、各イベントが到着するとすぐにクライアントへ転送されます。"
    "バランサーは複数のプロバイダーを一つの信頼できるエンドポイントに見せかけ、障害が起きても"
    "利用者には見えないように次のプロバイダーへ切り替えます。トークン使用量とコストは要求ごとに記録されます。"
)
KOREAN = (
    "스트리밍 응답은 각 이벤트가 도착하는 즉시 클라이언트로 전달됩니다. 밸런서는 여러 공급자를 하나의 "
    "신뢰할 수 있는 엔드포인트처럼 보이게 하며, 장애가 발생하면 사용자가 알아차리지 못하도록 다음 공급자로 "
    "전환합니다. 토큰 사용량과 비용은 요청마다 기록됩니다."
)
EMOJI = "Deploy done 🚀✅ tests green 🟢 coffee ☕ bugs 🐛🐛 fixed 🔧 — ship it! 🎉🎉 " * 8


def chunks(text: str, kind: str, source: str, rng: random.Random, n: int) -> list[dict[str, str]]:
    text = text.strip()
    if len(text) <= CHUNK:
        return [{"kind": kind, "source": source, "text": text}]
    starts = sorted(rng.sample(range(0, len(text) - CHUNK), min(n, max(1, (len(text) - CHUNK) // CHUNK))))
    return [{"kind": kind, "source": source, "text": text[s : s + CHUNK]} for s in starts]


def main(tokenizer_path: str) -> None:
    tok = Tokenizer.from_file(tokenizer_path)
    rng = random.Random(20261128)
    items: list[dict[str, str]] = []
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in [
        "asyncio/streams.py",
        "json/decoder.py",
        "http/client.py",
        "textwrap.py",
        "argparse.py",
        "email/message.py",
    ]:
        items += chunks((stdlib / name).read_text(), "code", f"stdlib/{name}", rng, 4)
    for name in ["README.md"]:
        items += chunks((ROOT / name).read_text(), "markdown", name, rng, 6)
    for ref in sorted((ROOT.parent / "shared" / "reference").glob("*.txt")):
        items += chunks(ref.read_text(), "cjk_mixed", f"shared/reference/{ref.name}", rng, 6)
    prose = (stdlib.parent.parent / "share").exists()
    del prose
    items += chunks((stdlib / "this.py").read_text(), "code", "stdlib/this.py", rng, 1)
    for mod in ["collections/__init__.py", "functools.py", "pathlib.py"]:
        source = (stdlib / mod).read_text()
        docs = "\n".join(
            line.strip()
            for line in source.splitlines()
            if line.strip()
            and not line.strip().startswith(
                ("def ", "class ", "return", "import", "from", "if ", "for ", "self.")
            )
        )
        items += chunks(docs, "english", f"stdlib/{mod} (prose lines)", rng, 4)
    schema = json.dumps(
        {
            "name": "edit_file",
            "input_schema": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Absolute path of the file to modify"},
                    "old_string": {"type": "string", "description": "The exact text to replace"},
                    "new_string": {"type": "string", "description": "The replacement text"},
                },
                "required": ["path"],
            },
        },
        indent=2,
    )
    items += [{"kind": "json", "source": "tool schema", "text": schema * 3}]
    items += [{"kind": "japanese", "source": "written for the corpus", "text": JAPANESE * 3}]
    items += [{"kind": "korean", "source": "written for the corpus", "text": KOREAN * 3}]
    items += [{"kind": "emoji", "source": "written for the corpus", "text": EMOJI}]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w") as f:
        for item in items:
            item["tokens"] = len(tok.encode(item["text"]).ids)  # type: ignore[assignment]
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    print(f"wrote {len(items)} samples to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
