"""What the admission gate tells an agent after a rejection (owned by `delm_rlm.verify`), and
what `delm_rlm.literals` says about code that looks for text its data lacks: each says what
was wrong and what to do next."""

# A PARTIAL whose value is empty although its chunk has text (delm_rlm.verify.empty_result).
VERIFY_EMPTY_RESULT = (
    "{what} although the chunk has {lines} non-empty lines: the code matched "
    "nothing, e.g. a field these lines do not have. Print a few lines and match what they "
    "contain (a log's level, a CSV column, a JSON key, as written there); if they do not "
    "state what the question is about (such as a label), label them first and count "
    "the labels:\n"
    "```repl\n"
    "from collections import Counter\n"
    "{labels_code}"
    "counts = Counter(labels)\n"
    "print(dict(counts))\n"
    'answer["content"] = str(dict(counts))\n'
    'answer["ready"] = True\n'
    "```"
)
VERIFY_EMPTY_WHAT = "the result is empty"
VERIFY_NO_VALUE_WHAT = "every count is under {key} (records without the field)"
# Without labels named in the question the hint has a placeholder that fails if copied as it
# is ([...] is not a label), instead of one that runs and counts made-up labels.
VERIFY_LABELS_PLACEHOLDER = (
    "LABELS = [...]  # every label the question (or the text) names, written exactly as there\n"
    "labels = classify(chunk.splitlines(), LABELS)\n"
)
VERIFY_ITERATES_CHARACTERS = (
    "your code loops `for ... in chunk`: chunk is one str, so that loop goes character by "
    "character and no line ever matches; loop over chunk.splitlines() instead. "
)
# What a program looks for that its data lacks (delm_rlm.literals), after a result
# that matched nothing or did not change on an emptied corpus.
LITERAL_HINTS_HEAD = "What the code looks for that the data does not contain:"
LITERAL_OTHER_CASE = "{literal} is not in the data, but {found} is ({times}): match the case the data uses"
LITERAL_OTHER_SPACING = "{literal} is not in the data, but {found} is: the spacing differs"
LITERAL_NOWHERE = "{literal} occurs nowhere in the data: print a few records and match what they contain"
LITERAL_IN_PATTERN = "in the pattern {pattern}, {hint}"
# The same reading of a cell that failed in an agent's REPL (delm_rlm.literals.cell_error_hint).
CELL_HINTS_HEAD = "What the data says about this error:"
CELL_LINES_LACK = (
    "{lacking} of the {total} non-empty lines have no {sep} (such as {example}), so a piece after "
    "it does not exist there: keep only the lines that contain {sep} before splitting"
)
CELL_KEY_MISSING = "there is no key {key} ({hint}; a field written inside each line is no column or key until code takes it out of the line)"
# The agreement stage (delm_rlm.verify.agreement): a chunk's partial against the team's
# admitted partials (schema) and against its own records (coverage).
VERIFY_OTHERS_USE = " (the team's admitted partials use the keys {keys})"
VERIFY_BLANK_KEY = (
    "the counts are under the blank key {key!r}, which names no value{others}: count each "
    "record under the value it holds, written exactly as the lines write it"
)
VERIFY_OTHER_SHAPE = (
    "this partial is {mine}, but the team's {n} admitted partial(s) are {theirs}: give your "
    "chunk's result in the same form (a key they use that your chunk lacks counts 0)"
)
VERIFY_KEY_SPELLING = (
    "the key {key!r} is spelled {spelling!r} in the team's admitted partials: use that "
    "spelling, so the chunks add up"
)
VERIFY_OUTSIDE_VOCABULARY = (
    "the keys {mine} share none with the keys the team's {n} admitted partials use "
    "({keys}): count under the same keys (a key your chunk lacks counts 0)"
)
VERIFY_NOT_LABELS = (
    "the keys {keys} are neither labels the question or the corpus names ({labels}) nor values "
    "a record of the chunk states in a field: no record here states what is asked, so label "
    "the chunk's {lines} records with classify(records, [the labels]) and count the labels "
    "(or count a field's values, as written there)"
)
VERIFY_UNLABELLED = (
    "{unlabelled} of the chunk's {records} records are counted under None (no label); at most "
    "{slack} may be: every record needs a label here. Label them all with classify(records, "
    "[the labels]) (records it leaves None: classify those again) and count the labels"
)
VERIFY_LOW_COVERAGE = (
    "the counts add up to {counted}, but the chunk has {records} records (non-empty lines): "
    "counts per key must account for at least {floor} of them (tolerance {percent}% of the "
    "records, at least {slack}). Count every record under its value (records without one "
    "under None: Counter(value or None for ...)); to count only some records, give one number"
)
# Finalization (delm_rlm.team.finalizer): the admitted partials cannot be combined.
FINAL_BLANK_KEYS = "partials {ids} count under a blank key '', which names no value"
FINAL_MIXED_SCHEMAS = "the partials use different schemas ({parts}): no answer from mixed schemas"
FINAL_OUTSIDE_VOCABULARY = "partial {id} uses the keys {mine}, none of the keys the other partials use ({keys})"
FINAL_REFUSED = "the finalizer refused to answer: {reason}"
# add_up's total when the answer reads a key some partials cannot vouch for.
FINAL_LACKING_KEY = (
    "refused: partials {ids} lack the key {key!r} and do not account for all their records, "
    "so their count of {key!r} is unknown; redo those chunks (add_task) or answer without it"
)
# Methods (delm_rlm.verify.methods).
METHOD_NEEDS_MODEL = (
    "a method runs with no model, but this code calls {names}: share it as a partial only "
    "(chunks that need the model are worked by agents)"
)
METHOD_NOT_CLAIMED = "on {task}'s chunk it prints {printed}, not the claimed {claimed}"

# Added to a check's NameError; {replayed} lists the replayed host tools, each after ", ".
VERIFY_FRESH_REPL = (
    "checks run in a fresh REPL: only context, docs, df, chunk{replayed} exist there; "
    "recompute everything inside the check"
)
