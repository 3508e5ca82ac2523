"""Class tables (ids, names, colours) of the official datasets, written from the published facts.

Cityscapes: the label table of cityscapesscripts ``helpers/labels.py`` (MIT): (name, id, trainId, colour).
ADE20K (SceneParsing, ADEChallengeData2016): the 150 class names of objectInfo150 (first name of each row);
gensynth's own palette. COCO-Stuff: the 182 names of labels.txt (1-based; stuffthingmaps store id - 1).
"""
from __future__ import annotations

CITYSCAPES = [  # (name, labelId, trainId, colour)
    ("unlabeled", 0, 255, (0, 0, 0)),
    ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)),
    ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)),
    ("dynamic", 5, 255, (111, 74, 0)),
    ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)),
    ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)),
    ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)),
    ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)),
    ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)),
    ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)),
    ("rider", 25, 12, (255, 0, 0)),
    ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)),
    ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)),
    ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
    # OASIS allocates 35 channels (label_nc 34 + 1); channel 34 is never set (license plate is -1 in the table)
    ("license plate", 34, 255, (0, 0, 142)),
]

ADE20K_NAMES = (
    "wall building sky floor tree ceiling road bed windowpane grass cabinet sidewalk person earth door table "
    "mountain plant curtain chair car water painting sofa shelf house sea mirror rug field armchair seat fence desk "
    "rock wardrobe lamp bathtub railing cushion base box column signboard chest_of_drawers counter sand sink "
    "skyscraper fireplace refrigerator grandstand path stairs runway case pool_table pillow screen_door stairway "
    "river bridge bookcase blind coffee_table toilet flower book hill bench countertop stove palm kitchen_island "
    "computer swivel_chair boat bar arcade_machine hovel bus towel light truck tower chandelier awning streetlight "
    "booth television_receiver airplane dirt_track apparel pole land bannister escalator ottoman bottle buffet "
    "poster stage van ship fountain conveyer_belt canopy washer plaything swimming_pool stool barrel basket "
    "waterfall tent bag minibike cradle oven ball food step tank trade_name microwave pot animal bicycle lake "
    "dishwasher screen blanket sculpture hood sconce vase traffic_light tray ashcan fan pier crt_screen plate "
    "monitor bulletin_board shower radiator glass clock flag"
).replace("_", "\0").split()
ADE20K_NAMES = [n.replace("\0", " ") for n in ADE20K_NAMES]

COCO_STUFF_NAMES = [n.replace("_", " ") for n in (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant street_sign stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe hat backpack umbrella shoe "
    "eye_glasses handbag tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard "
    "surfboard tennis_racket bottle plate wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli "
    "carrot hot_dog pizza donut cake chair couch potted_plant bed mirror dining_table window desk toilet door tv "
    "laptop mouse remote keyboard cell_phone microwave oven toaster sink refrigerator blender book clock vase "
    "scissors teddy_bear hair_drier toothbrush hair_brush "
    "banner blanket branch bridge building-other bush cabinet cage cardboard carpet ceiling-other ceiling-tile "
    "cloth clothes clouds counter cupboard curtain desk-stuff dirt door-stuff fence floor-marble floor-other "
    "floor-stone floor-tile floor-wood flower fog food-other fruit furniture-other grass gravel ground-other hill "
    "house leaves light mat metal mirror-stuff moss mountain mud napkin net paper pavement pillow plant-other "
    "plastic platform playingfield railing railroad river road rock roof rug salad sand sea shelf sky-other "
    "skyscraper snow solid-other stairs stone straw structural-other table tent textile-other towel tree vegetable "
    "wall-brick wall-concrete wall-other wall-panel wall-stone wall-tile wall-wood water-other waterdrops "
    "window-blind window-other wood").split()]


def palette(n: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """``n`` distinct colours: entry 0 black, then the bit-interleaved colour map used by many segmentation tools."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out
