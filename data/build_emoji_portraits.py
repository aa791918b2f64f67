"""Build the course's emoji image sets: portrait-like emoji (the default) or Twemoji things.

Both sets are made from the 64x64 RGBA PNGs of an npm package of emoji-data
(https://github.com/iamcal/emoji-data; its metadata ``emoji.json`` is MIT, Copyright (c) 2013
Cal Henderson), one package per image vendor. ``--set`` chooses the set (see ``SETS`` below):

``--set portraits`` (the default) -> ``data/emoji-portraits/``, the course's default data set.
    Google's Noto Emoji (Apache-2.0) from the package ``emoji-datasource-google``. We keep the
    emoji whose subcategory is ``person``, ``person-gesture``, ``person-role``, ``person-fantasy``
    or any ``face-*`` (all the Smileys faces), plus every skin-tone variation of them:
    290 base images + 825 skin tones = 1,115 images.

``--set things`` -> ``data/twemoji-things/``, a second folder of a different look and content.
    Twitter's Twemoji (CC-BY 4.0, Twitter, Inc. and other contributors) from the package
    ``emoji-datasource-twitter``. We keep every emoji of the categories ``Animals & Nature``,
    ``Food & Drink``, ``Travel & Places``, ``Activities`` and ``Objects`` that has a Twitter image
    (no people, smileys, flags or symbols; no skin-tone variations): 857 images.

Each RGBA image is alpha-composited onto plain white and saved as a 64x64 RGB PNG, so the
folder is an ordinary image folder: the course reads it with the same loader as a learner's
own pictures (``ddpm_lessons.data.read_image_folder``).

How to rebuild (needs npm, Python 3.10+, numpy and Pillow; a few seconds per set):

    cd /tmp
    npm pack emoji-datasource-google@16.0.0        # -> emoji-datasource-google-16.0.0.tgz (74 MB)
    tar xzf emoji-datasource-google-16.0.0.tgz     # -> ./package/
    cd -                                           # back to the repository root
    python data/build_emoji_portraits.py --package /tmp/package --out data/emoji-portraits

    # the Twemoji set; it unpacks to ./package/ too, so give it a folder of its own
    cd /tmp
    npm pack emoji-datasource-twitter@16.0.0       # -> emoji-datasource-twitter-16.0.0.tgz (62 MB)
    mkdir -p twitter && tar xzf emoji-datasource-twitter-16.0.0.tgz -C twitter   # -> ./twitter/package/
    cd -
    python data/build_emoji_portraits.py --set things --package /tmp/twitter/package --out data/twemoji-things

Output (the folder is emptied of old *.png first):
    data/emoji-portraits/<subcategory>_<sort>_<short-name>[_<skin-tone>].png
        e.g. person-role_0289_health-worker_medium-dark.png  (sort = the package's sort_order)
    data/emoji-portraits/labels.csv    file,name,subcategory,skin_tone
    data/emoji-portraits/LICENSE.txt   Apache-2.0 notice for the images, MIT notice for the data

    data/twemoji-things/<category>_<subcategory>_<sort>_<short-name>.png  (names slugged)
        e.g. animals-nature_animal-mammal_0565_dog.png  (emoji.json: "dog face")
    data/twemoji-things/labels.csv     file,name,category,subcategory  (as in emoji.json)
    data/twemoji-things/LICENSE.txt    CC-BY 4.0 attribution for the images, MIT notice for the data

The output is deterministic: the same package version gives byte-identical files.
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

VERSION = "16.0.0"               # of the emoji-datasource-* npm packages
NOTO_VERSION = "v2.048"          # the package README's table: Google images = Noto Emoji v2.048
TWEMOJI_VERSION = "v16.0.1"      # the same table: Twitter images = Twemoji (fork) v16.0.1
SIZE = 64
BACKGROUND = (255, 255, 255)
SUBCATEGORIES = ("person", "person-gesture", "person-role", "person-fantasy")  # + every face-*
THINGS_CATEGORIES = ("Animals & Nature", "Food & Drink", "Travel & Places", "Activities",
                     "Objects")
SKIN_TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium",
              "1F3FE": "medium-dark", "1F3FF": "dark"}


def keep_subcategory(subcategory: str) -> bool:
    return subcategory in SUBCATEGORIES or subcategory.startswith("face-")


def skin_tone_label(key: str) -> str:
    """'1F3FE' -> 'medium-dark'; a two-tone key '1F3FB-1F3FF' -> 'light+dark'."""
    tones = [SKIN_TONES[part] for part in key.upper().split("-")]
    if len(set(tones)) == 1:
        return tones[0]
    return "+".join(tones)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def select(emoji: list[dict], vendor: str = "google") -> list[dict]:
    """Portraits: one row per image to build, in the package's sort order, skin tones after
    their base."""
    has_img = f"has_img_{vendor}"
    rows = []
    for e in sorted(emoji, key=lambda e: e["sort_order"]):
        if not (keep_subcategory(e["subcategory"]) and e.get(has_img)):
            continue
        base = f"{e['subcategory']}_{e['sort_order']:04d}_{slug(e['short_name'])}"
        name = (e.get("name") or e["short_name"]).lower()
        rows.append(dict(file=f"{base}.png", name=name, subcategory=e["subcategory"],
                         skin_tone="none", image=e["image"]))
        for key, var in sorted((e.get("skin_variations") or {}).items()):
            if not var.get(has_img):
                continue
            tone = skin_tone_label(key)
            rows.append(dict(file=f"{base}_{tone}.png", name=name, subcategory=e["subcategory"],
                             skin_tone=tone, image=var["image"]))
    return rows


def select_things(emoji: list[dict], vendor: str = "twitter") -> list[dict]:
    """Things: one row per emoji of THINGS_CATEGORIES that has an image, in the package's sort
    order; skin-tone variations are ignored."""
    has_img = f"has_img_{vendor}"
    rows = []
    for e in sorted(emoji, key=lambda e: e["sort_order"]):
        if not (e["category"] in THINGS_CATEGORIES and e.get(has_img)):
            continue
        file = (f"{slug(e['category'])}_{slug(e['subcategory'])}_{e['sort_order']:04d}_"
                f"{slug(e['short_name'])}.png")
        rows.append(dict(file=file, name=(e.get("name") or e["short_name"]).lower(),
                         category=e["category"], subcategory=e["subcategory"], image=e["image"]))
    return rows


def composite_on_white(path: Path) -> Image.Image:
    """RGBA -> RGB by alpha compositing onto white (a plain convert('RGB') would keep the
    colour of fully transparent pixels, often black)."""
    with Image.open(path) as im:
        im = im.convert("RGBA")
        if im.size != (SIZE, SIZE):
            raise ValueError(f"{path.name}: expected {SIZE}x{SIZE}, got {im.size}")
        background = Image.new("RGBA", im.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, im).convert("RGB")


def build(package: Path, out: Path, set_name: str = "portraits") -> list[dict]:
    spec = SETS[set_name]
    emoji_json = package / "emoji.json"
    img_dir = package / "img" / spec.vendor / "64"
    if not emoji_json.is_file() or not img_dir.is_dir():
        sys.exit(f"error: {package} does not look like the unpacked {spec.package} package "
                 f"(need emoji.json and img/{spec.vendor}/64/). See this script's docstring.")
    meta = json.loads((package / "package.json").read_text())
    if meta.get("name") not in (None, spec.package):
        sys.exit(f"error: {package} is the package {meta.get('name')}; --set {set_name} needs "
                 f"{spec.package}. See this script's docstring.")
    if meta.get("version") != VERSION:
        print(f"warning: package version {meta.get('version')}, this script was written for "
              f"{VERSION}; counts may differ", file=sys.stderr)

    rows = spec.select(json.loads(emoji_json.read_text(encoding="utf-8")), spec.vendor)
    files = [r["file"] for r in rows]
    assert len(set(files)) == len(files), "file names are not unique"
    assert len(rows) >= spec.min_count, \
        f"only {len(rows)} images selected, expected >= {spec.min_count}"

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    for r in rows:
        rgb = composite_on_white(img_dir / r["image"])
        assert np.asarray(rgb).shape == (SIZE, SIZE, 3)
        rgb.save(out / r["file"], format="PNG", optimize=True)

    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(spec.fields), lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r[k] for k in writer.fieldnames})
    (out / "LICENSE.txt").write_text(spec.license_text(), encoding="utf-8")
    return rows


def license_text() -> str:
    package = SETS["portraits"].package
    return f"""\
The images in this folder are Noto Emoji images by Google (https://github.com/googlefonts/noto-emoji),
{NOTO_VERSION}, Copyright Google Inc. and the Noto Emoji contributors, licensed under the Apache License,
Version 2.0 (full text below). They were taken as 64x64 RGBA PNGs from the npm package
{package}@{VERSION} (https://github.com/iamcal/emoji-data).

Changes made: a selection of the images (people, roles, gestures, fantasy characters and faces,
with their skin-tone variations) was alpha-composited onto a plain white background and saved as
64x64 RGB PNG files under new names, by data/build_emoji_portraits.py of the ddpm-lessons course.

labels.csv is derived from emoji.json of the same package (emoji-data), which is under the MIT
License:

------------------------------------------------------------------------------------------------
{MIT_LICENSE}------------------------------------------------------------------------------------------------

{APACHE_LICENSE}"""


def license_text_things() -> str:
    package = SETS["things"].package
    return f"""\
The images in this folder are Twemoji graphics (https://github.com/jdecked/twemoji, {TWEMOJI_VERSION},
the maintained fork of https://github.com/twitter/twemoji),
Copyright Twitter, Inc. and other contributors,
licensed under the Creative Commons Attribution 4.0 International license (CC BY 4.0):
https://creativecommons.org/licenses/by/4.0/

They were taken as 64x64 RGBA PNGs from the npm package {package}@{VERSION}
(https://github.com/iamcal/emoji-data), whose README says: "Twitter images are available under the
Creative Commons Attribution 4.0 license" (linking to
https://github.com/jdecked/twemoji/blob/v15.0.2/LICENSE-GRAPHICS).

Changes made: a selection of the images (every emoji of the categories Animals & Nature,
Food & Drink, Travel & Places, Activities and Objects) was alpha-composited onto a plain white
background and saved as 64x64 RGB PNG files under new names, by data/build_emoji_portraits.py
of the ddpm-lessons course. The changed images are shared under the same CC BY 4.0 license.

No warranties are given: see the license's Section 5, Disclaimer of Warranties and Limitation of
Liability (https://creativecommons.org/licenses/by/4.0/legalcode).

labels.csv is derived from emoji.json of the same package (emoji-data), which is under the MIT
License:

------------------------------------------------------------------------------------------------
{MIT_LICENSE}------------------------------------------------------------------------------------------------
"""


@dataclass(frozen=True)
class ImageSet:
    package: str                                   # npm package, at VERSION
    vendor: str                                    # img/<vendor>/64/ and has_img_<vendor>
    folder: str                                    # default output folder next to this script
    select: Callable[[list[dict], str], list[dict]]
    fields: tuple[str, ...]                        # labels.csv columns (also the summary's)
    min_count: int                                 # sanity check on the selection
    license_text: Callable[[], str]


SETS = {
    "portraits": ImageSet("emoji-datasource-google", "google", "emoji-portraits", select,
                          ("file", "name", "subcategory", "skin_tone"), 1000, license_text),
    "things": ImageSet("emoji-datasource-twitter", "twitter", "twemoji-things", select_things,
                       ("file", "name", "category", "subcategory"), 800, license_text_things),
}


def summary(rows: list[dict], keys: tuple[str, ...] = ("subcategory", "skin_tone")) -> str:
    lines = [f"{len(rows)} images"]
    for i, key in enumerate(keys):
        if i:
            lines.append(f"by {key.replace('_', ' ')}:")
        counts = collections.Counter(r[key] for r in rows)
        lines += [f"  {k:24s} {v:5d}" for k, v in sorted(counts.items())]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="set_name", choices=sorted(SETS), default="portraits",
                        help="which image set to build (default: portraits)")
    parser.add_argument("--package", type=Path, required=True,
                        help=f"the unpacked npm package (the 'package' folder): "
                             f"{SETS['portraits'].package}@{VERSION} for portraits, "
                             f"{SETS['things'].package}@{VERSION} for things")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: data/emoji-portraits or data/twemoji-things "
                             "next to this script)")
    args = parser.parse_args(argv)
    spec = SETS[args.set_name]
    out = args.out if args.out is not None else Path(__file__).parent / spec.folder
    rows = build(args.package, out, args.set_name)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(summary(rows, spec.fields[2:]))
    print(f"wrote {len(rows)} PNGs + labels.csv + LICENSE.txt to {out} ({size / 1e6:.1f} MB)")


MIT_LICENSE = """\
The MIT License (MIT)

Copyright (c) 2013 Cal Henderson

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

# The Apache License 2.0, verbatim (terms and conditions; the appendix is omitted).
APACHE_LICENSE = """\

                                 Apache License
                           Version 2.0, January 2004
                        http://www.apache.org/licenses/

   TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION

   1. Definitions.

      "License" shall mean the terms and conditions for use, reproduction,
      and distribution as defined by Sections 1 through 9 of this document.

      "Licensor" shall mean the copyright owner or entity authorized by
      the copyright owner that is granting the License.

      "Legal Entity" shall mean the union of the acting entity and all
      other entities that control, are controlled by, or are under common
      control with that entity. For the purposes of this definition,
      "control" means (i) the power, direct or indirect, to cause the
      direction or management of such entity, whether by contract or
      otherwise, or (ii) ownership of fifty percent (50%) or more of the
      outstanding shares, or (iii) beneficial ownership of such entity.

      "You" (or "Your") shall mean an individual or Legal Entity
      exercising permissions granted by this License.

      "Source" form shall mean the preferred form for making modifications,
      including but not limited to software source code, documentation
      source, and configuration files.

      "Object" form shall mean any form resulting from mechanical
      transformation or translation of a Source form, including but
      not limited to compiled object code, generated documentation,
      and conversions to other media types.

      "Work" shall mean the work of authorship, whether in Source or
      Object form, made available under the License, as indicated by a
      copyright notice that is included in or attached to the work
      (an example is provided in the Appendix below).

      "Derivative Works" shall mean any work, whether in Source or Object
      form, that is based on (or derived from) the Work and for which the
      editorial revisions, annotations, elaborations, or other modifications
      represent, as a whole, an original work of authorship. For the purposes
      of this License, Derivative Works shall not include works that remain
      separable from, or merely link (or bind by name) to the interfaces of,
      the Work and Derivative Works thereof.

      "Contribution" shall mean any work of authorship, including
      the original version of the Work and any modifications or additions
      to that Work or Derivative Works thereof, that is intentionally
      submitted to Licensor for inclusion in the Work by the copyright owner
      or by an individual or Legal Entity authorized to submit on behalf of
      the copyright owner. For the purposes of this definition, "submitted"
      means any form of electronic, verbal, or written communication sent
      to the Licensor or its representatives, including but not limited to
      communication on electronic mailing lists, source code control systems,
      and issue tracking systems that are managed by, or on behalf of, the
      Licensor for the purpose of discussing and improving the Work, but
      excluding communication that is conspicuously marked or otherwise
      designated in writing by the copyright owner as "Not a Contribution."

      "Contributor" shall mean Licensor and any individual or Legal Entity
      on behalf of whom a Contribution has been received by Licensor and
      subsequently incorporated within the Work.

   2. Grant of Copyright License. Subject to the terms and conditions of
      this License, each Contributor hereby grants to You a perpetual,
      worldwide, non-exclusive, no-charge, royalty-free, irrevocable
      copyright license to reproduce, prepare Derivative Works of,
      publicly display, publicly perform, sublicense, and distribute the
      Work and such Derivative Works in Source or Object form.

   3. Grant of Patent License. Subject to the terms and conditions of
      this License, each Contributor hereby grants to You a perpetual,
      worldwide, non-exclusive, no-charge, royalty-free, irrevocable
      (except as stated in this section) patent license to make, have made,
      use, offer to sell, sell, import, and otherwise transfer the Work,
      where such license applies only to those patent claims licensable
      by such Contributor that are necessarily infringed by their
      Contribution(s) alone or by combination of their Contribution(s)
      with the Work to which such Contribution(s) was submitted. If You
      institute patent litigation against any entity (including a
      cross-claim or counterclaim in a lawsuit) alleging that the Work
      or a Contribution incorporated within the Work constitutes direct
      or contributory patent infringement, then any patent licenses
      granted to You under this License for that Work shall terminate
      as of the date such litigation is filed.

   4. Redistribution. You may reproduce and distribute copies of the
      Work or Derivative Works thereof in any medium, with or without
      modifications, and in Source or Object form, provided that You
      meet the following conditions:

      (a) You must give any other recipients of the Work or
          Derivative Works a copy of this License; and

      (b) You must cause any modified files to carry prominent notices
          stating that You changed the files; and

      (c) You must retain, in the Source form of any Derivative Works
          that You distribute, all copyright, patent, trademark, and
          attribution notices from the Source form of the Work,
          excluding those notices that do not pertain to any part of
          the Derivative Works; and

      (d) If the Work includes a "NOTICE" text file as part of its
          distribution, then any Derivative Works that You distribute must
          include a readable copy of the attribution notices contained
          within such NOTICE file, excluding those notices that do not
          pertain to any part of the Derivative Works, in at least one
          of the following places: within a NOTICE text file distributed
          as part of the Derivative Works; within the Source form or
          documentation, if provided along with the Derivative Works; or,
          within a display generated by the Derivative Works, if and
          wherever such third-party notices normally appear. The contents
          of the NOTICE file are for informational purposes only and
          do not modify the License. You may add Your own attribution
          notices within Derivative Works that You distribute, alongside
          or as an addendum to the NOTICE text from the Work, provided
          that such additional attribution notices cannot be construed
          as modifying the License.

      You may add Your own copyright statement to Your modifications and
      may provide additional or different license terms and conditions
      for use, reproduction, or distribution of Your modifications, or
      for any such Derivative Works as a whole, provided Your use,
      reproduction, and distribution of the Work otherwise complies with
      the conditions stated in this License.

   5. Submission of Contributions. Unless You explicitly state otherwise,
      any Contribution intentionally submitted for inclusion in the Work
      by You to the Licensor shall be under the terms and conditions of
      this License, without any additional terms or conditions.
      Notwithstanding the above, nothing herein shall supersede or modify
      the terms of any separate license agreement you may have executed
      with Licensor regarding such Contributions.

   6. Trademarks. This License does not grant permission to use the trade
      names, trademarks, service marks, or product names of the Licensor,
      except as required for reasonable and customary use in describing the
      origin of the Work and reproducing the content of the NOTICE file.

   7. Disclaimer of Warranty. Unless required by applicable law or
      agreed to in writing, Licensor provides the Work (and each
      Contributor provides its Contributions) on an "AS IS" BASIS,
      WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or
      implied, including, without limitation, any warranties or conditions
      of TITLE, NON-INFRINGEMENT, MERCHANTABILITY, or FITNESS FOR A
      PARTICULAR PURPOSE. You are solely responsible for determining the
      appropriateness of using or redistributing the Work and assume any
      risks associated with Your exercise of permissions under this License.

   8. Limitation of Liability. In no event and under no legal theory,
      whether in tort (including negligence), contract, or otherwise,
      unless required by applicable law (such as deliberate and grossly
      negligent acts) or agreed to in writing, shall any Contributor be
      liable to You for damages, including any direct, indirect, special,
      incidental, or consequential damages of any character arising as a
      result of this License or out of the use or inability to use the
      Work (including but not limited to damages for loss of goodwill,
      work stoppage, computer failure or malfunction, or any and all
      other commercial damages or losses), even if such Contributor
      has been advised of the possibility of such damages.

   9. Accepting Warranty or Additional Liability. While redistributing
      the Work or Derivative Works thereof, You may choose to offer,
      and charge a fee for, acceptance of support, warranty, indemnity,
      or other liability obligations and/or rights consistent with this
      License. However, in accepting such obligations, You may act only
      on Your own behalf and on Your sole responsibility, not on behalf
      of any other Contributor, and only if You agree to indemnify,
      defend, and hold each Contributor harmless for any liability
      incurred by, or claims asserted against, such Contributor by reason
      of your accepting any such warranty or additional liability.

   END OF TERMS AND CONDITIONS
"""

if __name__ == "__main__":
    main()
