"""Attention explanations rendered for people: coloured terminal text and a self-contained HTML page.

Each token of the original text is shaded by its attention weight relative to the text's largest
weight; the text between tokens (spaces, punctuation the tokenizer dropped) is shown as it is.
"""

from __future__ import annotations

import html
import re

from trainer.inference.loaded import Explanation

BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)  # IMDB's line breaks


def top_tokens(explanation: Explanation, k: int = 8) -> list[tuple[str, float]]:
    """The k tokens with the most attention, as (text as written, weight)."""
    ranked = sorted(range(len(explanation.weights)), key=lambda i: -explanation.weights[i])[:k]
    return [(explanation.text[slice(*explanation.spans[i])], explanation.weights[i]) for i in ranked]


def _segments(explanation: Explanation):
    """(text, weight or None) pieces covering the whole text in order."""
    position = 0
    for (start, end), weight in zip(explanation.spans, explanation.weights, strict=True):
        if start < position:  # overlapping offsets (rare normalisations): skip the repeat
            continue
        if start > position:
            yield explanation.text[position:start], None
        yield explanation.text[start:end], weight
        position = end
    if position < len(explanation.text):
        yield explanation.text[position:], None


def ansi(explanation: Explanation) -> str:
    """The text with a background shade per token (24-bit colour escapes), for terminals."""
    peak = max(explanation.weights, default=0.0) or 1.0
    parts = []
    for piece, weight in _segments(explanation):
        share = (weight or 0.0) / peak
        if share < 0.1:
            parts.append(piece)
            continue
        green, blue = round(255 - 125 * share), round(255 - 255 * share)
        parts.append(f"\x1b[48;2;255;{green};{blue}m\x1b[30m{piece}\x1b[0m")
    return "".join(parts)


def _html_text(explanation: Explanation) -> str:
    peak = max(explanation.weights, default=0.0) or 1.0
    parts = []
    for piece, weight in _segments(explanation):
        if weight is None:
            parts.append("<br>".join(html.escape(part) for part in BREAK.split(piece)))
            continue
        alpha = weight / peak
        parts.append(
            f'<span class="t" style="background:rgba(255,130,0,{alpha:.3f})" '
            f'title="{weight:.4f}">{html.escape(piece)}</span>'
        )
    return "".join(parts)


def html_page(explanations: list[Explanation], title: str = "Attention", captions: list[str] | None = None) -> str:
    """A self-contained page (inline CSS, no scripts) highlighting each text's tokens; ``captions``
    adds a line of text to each one's heading (the true label of a mistake)."""
    cards = []
    for number, e in enumerate(explanations, 1):
        probabilities = ", ".join(f"{name} {p:.3f}" for name, p in e.probabilities.items())
        top = " · ".join(f"{html.escape(t)} <small>{w:.3f}</small>" for t, w in top_tokens(e))
        note = f" · truncated to {e.num_tokens} tokens" if e.truncated else ""
        caption = f" {html.escape(captions[number - 1])}" if captions else ""
        cards.append(
            f'<section><h2>#{number}: <span class="label">{html.escape(e.label)}</span>{caption} '
            f'<small>({probabilities}{note})</small></h2>\n<p class="text">{_html_text(e)}</p>\n'
            f'<p class="top">most attended: {top or "(no tokens)"}</p></section>'
        )
    body = "\n".join(cards)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 52em; margin: 2em auto; padding: 0 1em; color: #222; }}
section {{ border: 1px solid #ddd; border-radius: 6px; padding: 0.5em 1em; margin: 1em 0; }}
h2 {{ font-size: 1.05em; }} .label {{ font-weight: bold; }} small {{ color: #666; font-weight: normal; }}
.text {{ line-height: 1.7; }} .t {{ border-radius: 3px; }} .top {{ font-size: 0.9em; color: #444; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Each token is shaded by the attention the model gave it (darkest: the text's largest weight);
hover for the weight. Weights sum to 1 over a text's tokens.</p>
{body}
</body></html>
"""
