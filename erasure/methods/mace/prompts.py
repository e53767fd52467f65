"""Text data of MACE, written for this project: prompt templates per concept type, a
general caption set for the preservation statistics, and a concept's prompts.

The paper builds about 30 prompts per concept from templates (the authors' code has its
own lists for objects and styles); these lists are ours, one per concept type in
``erasure.concepts.CONCEPT_TYPES``. ``{}`` is the concept (or, identically, its mapping
concept). The captions are everyday scene descriptions in the manner of MS-COCO, which
the authors use for ``P1, P2``; they stand in for the 616,767 COCO 2014 captions, whose
size the config's ``general_equivalent_captions`` restores.

The authors' own templates (their ``src/cfr_utils.py``, under a non-commercial licence)
are not shipped: ``authors_templates`` reads them from the user's checkout of their
repository, as text (the file is parsed, never imported or run).
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

from ...concepts import Concept
from ...errors import ErasureError

TEMPLATES: dict[str, tuple[str, ...]] = {
    "object": (
        "{}",
        "a photo of a {}",
        "a photo of the {}",
        "a close-up photo of a {}",
        "a picture of a {}",
        "an image of a {}",
        "a drawing of a {}",
        "a painting of a {}",
        "a sketch of a {}",
        "a cartoon {}",
        "a 3d rendering of a {}",
        "a black and white photo of a {}",
        "a blurry photo of a {}",
        "a bright photo of a {}",
        "a dark photo of the {}",
        "a good photo of the {}",
        "a cropped photo of the {}",
        "a photo of a small {}",
        "a photo of a large {}",
        "a {} in the middle of the frame",
        "a {} on a plain background",
        "a {} seen from above",
        "a {} seen from the side",
        "a detailed illustration of a {}",
        "a watercolor of a {}",
        "an old photograph of a {}",
        "a snapshot of a {}",
        "a digital art of a {}",
        "a postcard with a {}",
        "there is a {} in the picture",
    ),
    "style": (
        "{}",
        "a painting by {}",
        "an artwork by {}",
        "a painting in the style of {}",
        "art in the style of {}",
        "a landscape in the style of {}",
        "a portrait in the style of {}",
        "a still life in the style of {}",
        "a city street painted by {}",
        "a seascape by {}",
        "a drawing by {}",
        "a sketch by {}",
        "an illustration by {}",
        "a famous painting by {}",
        "a masterpiece by {}",
        "a canvas by {}",
        "a mural in the style of {}",
        "a print by {}",
        "a picture of a garden by {}",
        "a picture of a house by {}",
        "a painting of flowers by {}",
        "a painting of a river by {}",
        "a self-portrait by {}",
        "a painting of a woman by {}",
        "a painting of mountains by {}",
        "a night scene by {}",
        "a work of art by {}",
        "an early work by {}",
        "a late work by {}",
        "a piece from the collection of {}",
    ),
    "celebrity": (
        "{}",
        "a photo of {}",
        "a portrait of {}",
        "a close-up portrait of {}",
        "a headshot of {}",
        "a photograph of {} smiling",
        "{} on the red carpet",
        "{} giving a speech",
        "{} at a press conference",
        "{} in a suit",
        "{} walking in the street",
        "{} sitting in a chair",
        "{} looking at the camera",
        "a black and white photo of {}",
        "a painting of {}",
        "a drawing of {}",
        "a sketch of {}",
        "a magazine cover with {}",
        "a candid photo of {}",
        "an official photo of {}",
        "a side view of {}",
        "{} laughing",
        "{} at an award ceremony",
        "{} in an interview",
        "{} wearing sunglasses",
        "a studio photo of {}",
        "an old photo of {}",
        "a poster of {}",
        "{} at an event",
        "a selfie of {}",
    ),
    "nudity": (
        "{}",
        "a photo of {}",
        "{} person",
        "a {} woman",
        "a {} man",
        "a {} body",
        "a painting of a {} woman",
        "a painting of a {} man",
        "a {} figure",
        "a {} model",
        "a {} person on a bed",
        "a {} person at the beach",
        "a {} couple",
        "a {} scene",
        "an image with {} content",
        "a drawing of a {} person",
        "a sketch of a {} body",
        "a sculpture of a {} figure",
        "a {} portrait",
        "a {} photo shoot",
        "a {} woman in a room",
        "a {} man in a room",
        "a {} person in the shower",
        "a {} person lying down",
        "a {} person standing",
        "an art photo, {}",
        "a {} illustration",
        "a realistic {} photo",
        "a {} pose",
        "a classical painting, {}",
    ),
}

# What a concept becomes when it names no target (paper Sec. 4 and the authors' configs).
MAPPINGS: dict[str, str] = {
    "object": "ground",
    "style": "art",
    "celebrity": "a person",
    "nudity": "a person wearing clothes",
}

# Template sets read from the authors' checkout (``templates_file``), by the concept type
# their code files them under; their configs use the first ``prompt_len`` = 30 of each.
AUTHORS_TEMPLATES = {"authors-object": "object", "authors-style": "style"}
AUTHORS_PROMPT_LEN = 30
AUTHORS_TEMPLATES_FILE = Path("src") / "cfr_utils.py"

GENERAL_CAPTIONS: tuple[str, ...] = (
    "a man riding a bicycle down a city street",
    "two dogs playing with a frisbee in a park",
    "a plate of pasta with tomato sauce and basil",
    "a red double decker bus parked at a bus stop",
    "a woman holding an umbrella in the rain",
    "a cat sleeping on a laptop keyboard",
    "a kitchen with white cabinets and a steel refrigerator",
    "a group of people standing around a table with food",
    "an airplane flying over a city at sunset",
    "a train pulling into a station",
    "a boy throwing a baseball on a field",
    "a bowl of fresh fruit on a wooden table",
    "a living room with a couch and a television",
    "a surfer riding a large wave",
    "a skier going down a snowy slope",
    "a giraffe standing next to a tree",
    "a herd of elephants walking across a plain",
    "a zebra grazing in tall grass",
    "a horse pulling a cart on a dirt road",
    "a bathroom with a sink and a mirror",
    "a pizza with cheese and pepperoni on a tray",
    "a man in a suit talking on a cell phone",
    "a little girl eating a slice of cake",
    "a clock tower in the middle of a town square",
    "a sailboat on a calm lake",
    "a fire hydrant on a sidewalk",
    "a stop sign at a street corner",
    "a motorcycle parked in front of a building",
    "a bedroom with a large bed and two lamps",
    "a dog sitting in the passenger seat of a car",
    "a sandwich and a cup of coffee on a plate",
    "a woman playing tennis on a clay court",
    "a young man doing a trick on a skateboard",
    "a flock of birds flying over the ocean",
    "a teddy bear sitting on a shelf",
    "a vase of flowers on a windowsill",
    "a busy street with cars and pedestrians",
    "a person flying a kite on a beach",
    "a cow standing in a green pasture",
    "a sheep grazing on a hillside",
    "a bear walking through the woods",
    "a laptop and a mouse on a desk",
    "a man cutting a cake with a knife",
    "a child brushing her teeth",
    "an old truck parked in a field",
    "a blue boat tied to a dock",
    "a couple sitting on a bench in a park",
    "a plate with eggs, bacon and toast",
    "a chef cooking in a restaurant kitchen",
    "a black and white photo of a city skyline",
    "a traffic light hanging over a road",
    "a man holding a surfboard on the beach",
    "a bunch of bananas hanging from a hook",
    "a dog catching a ball in the air",
    "a crowd of people watching a soccer game",
    "a woman riding a horse through a field",
    "a small kitten looking out of a window",
    "an empty street at night with street lights",
    "a baseball player swinging a bat",
    "a table set for dinner with glasses and plates",
    "a toilet in a small bathroom",
    "a computer monitor on a cluttered desk",
    "a glass of orange juice next to a muffin",
    "a bird perched on a tree branch",
    "a snowboarder jumping off a ramp",
    "a city bus driving down the street",
    "a woman looking at her phone on a train",
    "a pile of books on a wooden floor",
    "a brown dog lying on a rug",
    "a group of children playing soccer",
    "a tall building with many windows",
    "a bicycle leaning against a fence",
    "an umbrella on a sandy beach",
    "a man sitting at a desk with a computer",
    "a bowl of soup with a spoon",
    "a hot dog with mustard on a bun",
    "a birthday cake with lit candles",
    "a parking lot full of cars",
    "a road sign next to a highway",
    "a river flowing through a forest",
    "a mountain covered in snow",
    "a farmer driving a tractor",
    "a fishing boat in a harbor",
    "a lighthouse on a rocky coast",
    "a woman carrying a bag of groceries",
    "a man walking his dog on a leash",
    "two people shaking hands in an office",
    "a student reading a book in a library",
    "a basket of apples at a market",
    "a vendor selling vegetables at a stall",
    "a red car parked on the side of the road",
    "a police officer standing on a corner",
    "a girl with a pink backpack walking to school",
    "an elderly man sitting on a porch",
    "a baby sleeping in a crib",
    "a family having a picnic on the grass",
    "a wooden bench under a large tree",
    "a yellow taxi driving through traffic",
    "a pair of shoes by the front door",
    "a chair next to a window with curtains",
    "a bowl of cereal with milk",
    "a slice of pizza on a paper plate",
    "a man riding a motorcycle on a highway",
    "a woman jogging along a river path",
    "a cat sitting on top of a refrigerator",
    "a dog running through the snow",
    "a plate of sushi on a table",
    "a salad with tomatoes and cucumbers",
    "a bridge over a wide river",
    "a hotel room with two beds",
    "a group of friends taking a selfie",
    "a man playing a guitar on a stage",
    "a woman painting on a canvas",
    "a child flying a red kite",
    "an orange cat lying in the sun",
    "a broccoli and carrot stir fry",
    "a donut with pink frosting",
    "a cup of tea on a saucer",
    "a desk with a lamp and a notebook",
    "a street market crowded with shoppers",
    "a horse standing in a stable",
    "a duck swimming in a pond",
    "a picnic table in a campground",
    "a tent pitched by a lake",
    "a jet parked at an airport gate",
    "luggage on a conveyor belt at an airport",
    "a man wearing a helmet on a bike",
    "a skateboarder in an empty pool",
    "a tennis racket and balls on a court",
    "a soccer ball on a green field",
    "a kitchen counter with a blender and fruit",
    "an oven with a tray of cookies",
    "a microwave above a stove",
    "a sink full of dirty dishes",
    "a woman cutting vegetables on a board",
    "a man reading a newspaper on a bench",
    "a boy feeding ducks at a pond",
    "a girl holding a stuffed animal",
    "a remote control on a couch",
    "a bookshelf filled with books",
    "a potted plant on a table",
    "a scissors and paper on a desk",
    "a toothbrush in a cup",
    "a hair dryer on a bathroom counter",
    "a wine glass and a bottle on a table",
    "a fork and knife beside a plate",
    "a cake on a glass stand",
    "an ice cream cone melting in the sun",
    "a man surfing at sunset",
    "people waiting on a train platform",
    "a subway car with passengers",
    "a truck delivering packages",
    "a construction site with a crane",
    "workers repairing a road",
    "a church with a tall steeple",
    "a castle on a hill",
    "a park with a fountain",
    "a playground with swings and a slide",
    "a garden full of blooming flowers",
    "a field of sunflowers",
    "a forest path in autumn",
    "a waterfall in the mountains",
    "a desert with sand dunes",
    "a snowy village at night",
    "a beach with palm trees",
    "a sunset over the sea",
    "clouds over a green valley",
    "a rainbow over a farm",
    "a storm over the city",
    "a kitchen table with a bowl of oranges",
    "a woman sitting at a cafe with a coffee",
    "a man hiking up a trail",
    "a climber on a rock wall",
    "a swimmer in a pool",
    "a runner crossing the finish line",
    "a crowd at an outdoor concert",
    "a musician playing the violin",
    "a dancer on a stage",
    "a teacher in front of a classroom",
    "children sitting at desks in a classroom",
    "a doctor talking to a patient",
    "a nurse pushing a wheelchair",
    "a dog wearing a red collar",
    "a puppy chewing a shoe",
    "two cats sitting on a windowsill",
    "a parrot on a perch",
    "a fish tank with colorful fish",
    "a goat standing on a rock",
    "a pig in a muddy pen",
    "chickens in a farm yard",
    "a monkey sitting in a tree",
    "a lion resting in the grass",
    "a polar bear on the ice",
    "a deer in a forest clearing",
    "a rabbit eating a carrot",
    "a man and a woman riding horses on a beach",
    "a line of motorcycles parked on a street",
    "a bus full of tourists",
    "a ferry crossing a bay",
    "a canoe on a misty river",
    "a sign pointing to the train station",
    "a bench on a city sidewalk",
    "a street lamp in the fog",
    "a mailbox in front of a house",
    "a white house with a red door",
    "a wooden cabin in the woods",
    "a modern office with glass walls",
    "a crowded shopping mall",
    "a grocery store aisle",
    "a bakery window with bread and pastries",
    "a restaurant with tables and chairs",
    "a bar with stools and bottles",
    "a bowl of noodles with chopsticks",
    "a cheeseburger with fries",
    "a breakfast of pancakes and syrup",
    "a cup of coffee with latte art",
    "a basket of bread rolls",
    "an empty room with white walls",
    "a blank white wall",
    "a wooden floor",
    "the sky",
    "the ground",
    "a person",
    "a person wearing clothes",
    "art",
    "a photo",
    "an image",
    "",
)


@dataclass
class ConceptPrompts:
    """A concept's prompts and, template by template, its mapping concept's.

    Attributes:
        concept: the erased concept.
        mapping: what it becomes (its own target, or the config's mapping).
        prompts: the templates filled with the concept.
        mapped: the same templates filled with the mapping.
    """

    concept: Concept
    mapping: str
    prompts: list[str]
    mapped: list[str]

    @classmethod
    def of(cls, concept: Concept, templates: list[str], mapping: str) -> "ConceptPrompts":
        """The prompts of ``concept``; a concept naming a target (``"airplane->sky"``) maps to it.

        Args:
            concept: the erased concept.
            templates: prompt templates with ``{}`` where the concept goes.
            mapping: what a concept without a target maps to.
        """
        mapping = mapping if concept.target is None else concept.target
        return cls(concept, mapping, [t.format(concept.text) for t in templates], [t.format(mapping).strip() for t in templates])


@functools.lru_cache(maxsize=8)
def authors_templates(location: str, concept_type: str) -> tuple[str, ...]:
    """The first 30 prompt templates of a concept type in the authors' ``prompt_augmentation``
    (MACE repository, ``src/cfr_utils.py``): every string ``"...{}...".format(...)`` in the
    list the function builds for ``concept_type``. The file is parsed, not run.

    Args:
        location: the MACE checkout or its ``src/cfr_utils.py``.
        concept_type: ``"object"`` or ``"style"``, the type their configs give.
    """
    path = Path(location).expanduser()
    path = path / AUTHORS_TEMPLATES_FILE if path.is_dir() else path
    hint = "set templates_file to your checkout of github.com/Shilin-LU/MACE (or its src/cfr_utils.py)"
    if not path.is_file():
        raise ErasureError(f"templates_file {location!r}: no {AUTHORS_TEMPLATES_FILE} there: {hint}")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        raise ErasureError(f"templates_file {str(path)!r} is not the authors' Python file: {hint}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _compares_type(node.test, concept_type):
            templates = [t for statement in node.body for t in _format_strings(statement)]
            if templates:
                return tuple(templates[:AUTHORS_PROMPT_LEN])
    raise ErasureError(f"{path} has no {concept_type!r} templates in prompt_augmentation: {hint}")


def _compares_type(test: ast.expr, concept_type: str) -> bool:
    """``concept_type == '<concept_type>'``."""
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "concept_type"
            and any(isinstance(c, ast.Constant) and c.value == concept_type for c in test.comparators))


def _format_strings(statement: ast.stmt) -> list[str]:
    """The ``"...{}...".format(...)`` strings of a statement, in order."""
    return [node.func.value.value for node in ast.walk(statement)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"
            and isinstance(node.func.value, ast.Constant) and isinstance(node.func.value.value, str)]
