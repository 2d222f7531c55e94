"""Answer normalisation of the official VQAv2 accuracy, as big_vision's `vqav2` evaluator does.

`strip_space` is applied to every prediction and reference; `normalize_vqav2_answer` only when an
example's references disagree (see `vqa_metrics.vqav2_accuracy`). The quirks of the official script
are kept on purpose (evaluators.md §3):
  * a mark of `PUNCTUATION` is deleted when it touches a space in the original string, or when the
    original string holds a digit-comma-digit anywhere (which then applies to every mark);
    otherwise it becomes a space;
  * a period is removed unless the next character is a digit (the script means "not between
    digits", but its look-behind is mistyped, so only the following character counts);
  * lower-case, split on whitespace, drop articles, map number words (none/zero..ten) and the
    contraction table, rejoin with single spaces. Keys that start with a capital ("Im", "Ive") can
    never match after lower-casing; they are kept to match the table.
"""

from __future__ import annotations

import re

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
               "@", "`", ",", "?", "!")
ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}

# The official contraction table (straight apostrophes, as big_vision uses it): "written form"
# followed by its replacement, one pair per entry.
_CONTRACTION_PAIRS = """
aint ain't | arent aren't | cant can't | couldve could've | couldnt couldn't
couldn'tve couldn't've | couldnt've couldn't've | didnt didn't | doesnt doesn't | dont don't
hadnt hadn't | hadnt've hadn't've | hadn'tve hadn't've | hasnt hasn't | havent haven't | hed he'd
hed've he'd've | he'dve he'd've | hes he's | howd how'd | howll how'll | hows how's
Id've I'd've | I'dve I'd've | Im I'm | Ive I've | isnt isn't | itd it'd | itd've it'd've
it'dve it'd've | itll it'll | let's let's | maam ma'am | mightnt mightn't | mightnt've mightn't've
mightn'tve mightn't've | mightve might've | mustnt mustn't | mustve must've | neednt needn't
notve not've | oclock o'clock | oughtnt oughtn't | ow's'at 'ow's'at | 'ows'at 'ow's'at
'ow'sat 'ow's'at | shant shan't | shed've she'd've | she'dve she'd've | she's she's
shouldve should've | shouldnt shouldn't | shouldnt've shouldn't've | shouldn'tve shouldn't've
somebody'd somebodyd | somebodyd've somebody'd've | somebody'dve somebody'd've
somebodyll somebody'll | somebodys somebody's | someoned someone'd | someoned've someone'd've
someone'dve someone'd've | someonell someone'll | someones someone's | somethingd something'd
somethingd've something'd've | something'dve something'd've | somethingll something'll
thats that's | thered there'd | thered've there'd've | there'dve there'd've | therere there're
theres there's | theyd they'd | theyd've they'd've | they'dve they'd've | theyll they'll
theyre they're | theyve they've | twas 'twas | wasnt wasn't | wed've we'd've | we'dve we'd've
weve we've | werent weren't | whatll what'll | whatre what're | whats what's | whatve what've
whens when's | whered where'd | wheres where's | whereve where've | whod who'd | whod've who'd've
who'dve who'd've | wholl who'll | whos who's | whove who've | whyll why'll | whyre why're
whys why's | wont won't | wouldve would've | wouldnt wouldn't | wouldnt've wouldn't've
wouldn'tve wouldn't've | yall y'all | yall'll y'all'll | y'allll y'all'll | yall'd've y'all'd've
y'alld've y'all'd've | y'all'dve y'all'd've | youd you'd | youd've you'd've | you'dve you'd've
youll you'll | youre you're | youve you've
"""
CONTRACTIONS = dict(pair.split() for line in _CONTRACTION_PAIRS.strip().splitlines()
                    for pair in line.split("|"))

_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")


def strip_space(text: str) -> str:
  """The cleanup always applied: tabs and newlines become spaces, then both ends are stripped."""
  return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
  delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
  out = text
  for mark in PUNCTUATION:
    touches_space = f"{mark} " in text or f" {mark}" in text
    out = out.replace(mark, "" if delete_all or touches_space else " ")
  return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def _process_words(text: str) -> str:
  words = []
  for word in text.lower().split():
    word = NUMBER_WORDS.get(word, word)
    if word in ARTICLES:
      continue
    words.append(CONTRACTIONS.get(word, word))
  return " ".join(words)


def normalize_vqav2_answer(text: str) -> str:
  """The official VQA normalisation: punctuation, periods, case, articles, numbers, contractions."""
  return _process_words(_process_punctuation(text))
