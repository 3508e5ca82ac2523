"""Hook implementations of this plugin (registered through the gensynth entry point)."""
from gensynth import hookimpl

from gensynth_datasets.ade20k import ADE20KOutdoorsSpec, ADE20KSpec
from gensynth_datasets.cityscapes import CityscapesSpec
from gensynth_datasets.coco_stuff import CocoStuffSpec
from gensynth_datasets.demo import DemoSpec
from gensynth_datasets.folder import FolderSpec


@hookimpl
def register_datasets(register):
    register("demo", DemoSpec(), description="procedural outdoor scenes (built in, no download, any size)")
    register("cityscapes", CityscapesSpec(), description="Cityscapes gtFine: 35 classes, 256x512, instances")
    register("ade20k", ADE20KSpec(), description="ADE20K SceneParsing: 151 classes, 256x256")
    register("ade20k-outdoors", ADE20KOutdoorsSpec(),
             description="ADE20K outdoor subset (class-based filter; no official list exists)")
    register("coco-stuff", CocoStuffSpec(), description="COCO-Stuff 164k: 183 classes, 256x256, optional instances")
    register("folder", FolderSpec(), description="your own images/ + labels/ + classes.json")
