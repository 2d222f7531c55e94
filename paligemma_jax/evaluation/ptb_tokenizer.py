"""Caption tokenisation for CIDEr-D: a pure-Python stand-in for pycocoevalcap's PTBTokenizer.

pycocoevalcap (and so big_vision's captioning evaluator) runs Stanford CoreNLP 3.4.1's
`PTBTokenizer -preserveLines -lowerCase` in Java on every hypothesis and reference, then drops the
tokens in its PUNCTUATIONS list (`'' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;`).
Java is not a dependency of this project, so `ptb_tokenize` applies these rules instead:

1. Lower-case; every run of whitespace is one separator.
2. Quotes (`"`, `` ` ``, a `'` that opens or closes a word) separate words and are dropped.
3. Brackets become PTB's escapes, lower-cased, and are KEPT: `(` -> `-lrb-`, `)` -> `-rrb-`,
   `[` `]` -> `-lsb-` `-rsb-`, `{` `}` -> `-lcb-` `-rcb-`. This is what the Java pipeline does:
   `-lowerCase` lower-cases the escapes, so the upper-case `-LRB-` entries of PUNCTUATIONS never
   match them (checked against CoreNLP 3.4.1: "a dog (brown)" -> "a dog -lrb- brown -rrb-").
4. `, ; :` split off and are dropped, except a comma or colon between digits ("1,000", "12:30").
   Runs of `!` / `?` are one token, dropped only when it is a single "!" or "?" ("!?" stays, as
   in Java). "..." and "--" split off and are dropped; a lone "-" is dropped; hyphens inside a word
   stay ("black-and-white").
5. `$ # % + = ~ ^ * | \\ < >` are split off as their own (kept) tokens; `& @ /` and `'` inside a
   word stay ("at&t", "a/b", "o'clock"), and so does the apostrophe of "'90s".
6. A word's final period is split off and dropped unless the word is an abbreviation: letters
   separated by periods ("u.s.", "a.m.", "j.") or one of `ABBREVIATIONS` ("mr.", "etc.").
   Periods inside words and numbers stay ("3.5", "www.x.com").
7. Clitics split as in the Penn Treebank: "isn't" -> "is n't", "can't" -> "ca n't",
   "dog's" -> "dog 's", also 'm 're 've 'll 'd, a trailing "'" ("dogs'" -> "dogs"), and
   "cannot gonna gotta wanna gimme lemme" -> "can not", "gon na", ...

Known differences from CoreNLP (rare in captions): its abbreviation list is longer, it keeps
SGML-like tags ("<b>") whole, splits "rock'n'roll" into "rock 'n' roll", drops characters it
cannot tokenise (emoji) and normalises some Unicode punctuation. Tests compare this function with
the Java tokenizer where Java and pycocoevalcap are installed.
"""

from __future__ import annotations

import re

# Tokens pycocoevalcap removes after CoreNLP's lower-cased output (its PUNCTUATIONS list; the
# upper-case bracket escapes in that list cannot match lower-cased text, so they are not here).
REMOVED = frozenset({"''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"})

ABBREVIATIONS = frozenset({
    "mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "prof.", "mt.", "ft.", "vs.", "etc.",
    "inc.", "ltd.", "co.", "corp.", "no.", "jan.", "feb.", "aug.", "sept.", "oct.", "nov.",
    "dec.", "ave.", "blvd.", "rd.",
})
_SPECIAL_SPLITS = {
    "cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"),
    "wanna": ("wan", "na"), "gimme": ("gim", "me"), "lemme": ("lem", "me"),
}
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_CLITICS = ("n't", "'s", "'m", "'re", "'ve", "'ll", "'d")

_BRACKET_RE = re.compile(r"[()\[\]{}]")
_QUOTE_RE = re.compile(r"\"|``|''|`")
_SYMBOL_RE = re.compile(r"[$#%+=~^*|\\<>]")
_BANG_RE = re.compile(r"[!?]+")
_SEPARATOR_RE = re.compile(r"(?<![0-9])[,:]|[,:](?![0-9])|;")
_DASHES_RE = re.compile(r"\.\.\.+|--+")
_ABBREVIATION_RE = re.compile(r"(?:[^\W\d_]\.)+")
_DECADE_RE = re.compile(r"'[0-9]0s")


def ptb_tokenize(text: str) -> str:
  """`text` tokenised and cleaned as pycocoevalcap's PTBTokenizer would: tokens joined by spaces."""
  text = text.lower()
  text = _BRACKET_RE.sub(lambda m: f" {_BRACKETS[m.group()]} ", text)
  text = _QUOTE_RE.sub(" ", text)
  text = _SYMBOL_RE.sub(lambda m: f" {m.group()} ", text)
  text = _BANG_RE.sub(lambda m: f" {m.group()} ", text)
  text = _SEPARATOR_RE.sub(" ", text)
  text = _DASHES_RE.sub(" ", text)
  tokens = []
  for word in text.split():
    tokens.extend(_split_word(word))
  return " ".join(t for t in tokens if t not in REMOVED)


def _split_word(word: str) -> list[str]:
  """One whitespace-free piece: outer single quotes, a final period and clitics split off."""
  if not _DECADE_RE.fullmatch(word):  # "'90s" keeps its apostrophe
    word = word.strip("'")
  if word.endswith(".") and len(word) > 1 and not _is_abbreviation(word):
    word = word[:-1].rstrip("'")
  if not word:
    return []
  if word in _SPECIAL_SPLITS:
    return list(_SPECIAL_SPLITS[word])
  for clitic in _CLITICS:
    if word.endswith(clitic) and len(word) > len(clitic):
      return [word[:-len(clitic)], clitic]
  return [word]


def _is_abbreviation(word: str) -> bool:
  return word in ABBREVIATIONS or _ABBREVIATION_RE.fullmatch(word) is not None
