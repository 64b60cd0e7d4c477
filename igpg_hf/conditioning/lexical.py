"""Word overlap between an instruction and the known tasks' wordings, beside the embeddings' similarity.

Sentence embeddings (MiniLM's, and the prior's pooling of them) are weak on the words that set tasks of one
source apart: numbers ("180 degrees", "8x8 pixels"), "horizontal" against "vertical". On the general pipeline
the prior's pooling named the right task for 0.873 of the 1,155 held-out evaluation wordings; adding ``3 x`` the
TF-IDF cosine below to its cosine named it for 0.915 (calibration split, where the weight was chosen among
0-100: 0.896 -> 0.952). `IGPGPipeline.identify_task` adds it with the prior config's
``identify_lexical_weight`` (the "general" recipe sets 3; the default 0 leaves it out: on the demo pipeline's 4
tasks, 32 stored wordings each, the words' statistics are noise and identification fell from 0.948 to 0.911).

TF-IDF (Salton & Buckley, 1988, "Term-weighting approaches in automatic text retrieval") with one document per
task (its known wordings, each word counted once per wording), sublinear term frequency and idf = log(N / df).
Written here (a dozen lines) rather than taken from scikit-learn's ``TfidfVectorizer``, which is not among the
package's dependencies.
"""

from __future__ import annotations

import math
import re
from collections import Counter

__all__ = ["LexicalTaskIndex", "words"]


def words(text: str) -> list[str]:
    """Lower-cased runs of letters and digits: "28x28, rotated by 90" -> ["28x28", "rotated", "by", "90"]."""
    return re.findall(r"[a-z0-9]+", text.lower())


class LexicalTaskIndex:
    """TF-IDF vectors of the known tasks' wordings; `similarity` gives a query's cosine with each task, in [0, 1].

    ``wordings``: task -> its wordings (e.g. ``{t: k.wordings for t, k in pipe.known_tasks().items()}``).
    A word no task uses adds nothing; a word every task uses weighs 0.
    """

    def __init__(self, wordings: dict[str, list[str]]):
        docs = {t: Counter(w for text in texts for w in set(words(text))) for t, texts in wordings.items()}
        df = Counter(w for d in docs.values() for w in d)
        self.idf = {w: math.log(len(docs) / n) for w, n in df.items()}
        self.vectors = {t: self._vector(d) for t, d in docs.items()}

    def _vector(self, counts: Counter) -> dict[str, float]:
        v = {w: (1 + math.log(n)) * self.idf.get(w, 0.0) for w, n in counts.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {w: x / norm for w, x in v.items() if x}

    def similarity(self, text: str) -> dict[str, float]:
        """Cosine of ``text``'s TF-IDF vector with each task's (0 for a text that shares no weighted word)."""
        q = self._vector(Counter(words(text)))
        return {t: sum(x * v.get(w, 0.0) for w, x in q.items()) for t, v in self.vectors.items()}
