"""The synthetic shop's vocabulary: taxonomy, brands, attributes, query synonyms, complements.

Kept apart from the generator so the tables read as data. Every leaf category says how its
items are named (title noun), how shoppers name it (query nouns, synonyms first-class), which
brands sell it, which attributes its items carry, its price distribution and which leaves
complement it (socks for running shoes). Order matters: the generator draws from these tuples
by index, so reordering a table changes every generated dataset.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttributeKind:
    """One attribute: its key in Item.attributes and how titles and queries spell a value.

    prefix: shown before the title noun ("Men's", "12-Cup") rather than after a comma ("Black").
    """

    key: str
    title_format: str = "{}"
    query_format: str = "{}"
    prefix: bool = False

    def title(self, value: str) -> str:
        return self.title_format.format(value)

    def query(self, value: str) -> str:
        return self.query_format.format(value).lower()


GENDER = AttributeKind("gender", "{}'s", "{}", prefix=True)
COLOR = AttributeKind("color")
SIZE = AttributeKind("size", "Size {}", "size {}")
MATERIAL = AttributeKind("material")
CAPACITY = AttributeKind("capacity", prefix=True)
PACK = AttributeKind("pack", prefix=True)
POWER = AttributeKind("power")

ATTRIBUTE_KINDS: tuple[AttributeKind, ...] = (GENDER, COLOR, SIZE, MATERIAL, CAPACITY, PACK, POWER)

GENDERS = ("Men", "Women")
APPAREL_COLORS = ("Black", "White", "Grey", "Navy", "Blue", "Red", "Green", "Pink", "Beige", "Olive")
DEVICE_COLORS = ("Black", "White", "Silver", "Blue", "Graphite", "Rose Gold")
HOME_COLORS = ("Black", "White", "Silver", "Red", "Cream", "Sage Green")
SHOE_SIZES = ("6", "7", "8", "9", "10", "11", "12", "13")
APPAREL_SIZES = ("XS", "S", "M", "L", "XL", "XXL")


@dataclass(frozen=True)
class Leaf:
    """A leaf category and everything the generator needs to fill it."""

    path: tuple[str, ...]
    noun: str  # as titles say it: "Running Shoes"
    query_nouns: tuple[str, ...]  # as shoppers say it, synonyms included: "running sneakers"
    brands: tuple[str, ...]
    attributes: tuple[tuple[AttributeKind, tuple[str, ...]], ...]
    price_median: float  # dollars; prices are log-normal around it
    price_sigma: float
    complements: tuple[str, ...] = ()  # nouns of complementary leaves

    @property
    def name(self) -> str:
        return self.path[-1]


LEAVES: tuple[Leaf, ...] = (
    # --- Shoes ---------------------------------------------------------------------------------
    Leaf(
        ("Shoes", "Running Shoes"),
        "Running Shoes",
        ("running shoes", "running sneakers", "runners", "jogging shoes"),
        ("Nike", "Adidas", "Brooks", "Asics", "Hoka", "New Balance", "Saucony"),
        ((GENDER, GENDERS), (COLOR, APPAREL_COLORS), (SIZE, SHOE_SIZES)),
        110.0,
        0.35,
        ("Athletic Socks", "Water Bottles"),
    ),
    Leaf(
        ("Shoes", "Hiking Boots"),
        "Hiking Boots",
        ("hiking boots", "trekking boots", "hiking shoes", "trail boots"),
        ("Merrell", "Salomon", "Columbia", "Keen", "Timberland", "La Sportiva"),
        ((GENDER, GENDERS), (COLOR, ("Brown", "Black", "Grey", "Olive", "Tan")), (SIZE, SHOE_SIZES)),
        140.0,
        0.35,
        ("Athletic Socks", "Backpacks"),
    ),
    Leaf(
        ("Shoes", "Sandals"),
        "Sandals",
        ("sandals", "flip flops", "slides"),
        ("Teva", "Birkenstock", "Crocs", "Havaianas", "Chaco"),
        ((GENDER, GENDERS), (COLOR, APPAREL_COLORS), (SIZE, SHOE_SIZES)),
        45.0,
        0.5,
    ),
    Leaf(
        ("Shoes", "Casual Sneakers"),
        "Casual Sneakers",
        ("sneakers", "casual shoes", "trainers", "canvas shoes"),
        ("Converse", "Vans", "Nike", "Adidas", "Puma", "Reebok"),
        ((GENDER, GENDERS), (COLOR, APPAREL_COLORS), (SIZE, SHOE_SIZES), (MATERIAL, ("Canvas", "Leather", "Suede"))),
        75.0,
        0.4,
        ("Athletic Socks",),
    ),
    # --- Clothing ------------------------------------------------------------------------------
    Leaf(
        ("Clothing", "T-Shirts"),
        "T-Shirt",
        ("t-shirt", "t shirt", "tee", "tshirt"),
        ("Hanes", "Gildan", "Champion", "Under Armour", "Uniqlo", "Carhartt"),
        ((GENDER, GENDERS), (COLOR, APPAREL_COLORS), (SIZE, APPAREL_SIZES), (MATERIAL, ("Cotton", "Polyester"))),
        18.0,
        0.5,
        ("Jeans",),
    ),
    Leaf(
        ("Clothing", "Hoodies"),
        "Hoodie",
        ("hoodie", "hooded sweatshirt", "pullover hoodie", "sweatshirt"),
        ("Champion", "Nike", "Adidas", "Carhartt", "Under Armour", "The North Face"),
        ((GENDER, GENDERS), (COLOR, APPAREL_COLORS), (SIZE, APPAREL_SIZES), (MATERIAL, ("Cotton", "Fleece"))),
        50.0,
        0.45,
    ),
    Leaf(
        ("Clothing", "Jeans"),
        "Jeans",
        ("jeans", "denim pants", "denim jeans"),
        ("Levi's", "Wrangler", "Lee", "Diesel", "Gap"),
        ((GENDER, GENDERS), (COLOR, ("Blue", "Black", "Light Blue", "Grey")), (SIZE, APPAREL_SIZES)),
        55.0,
        0.45,
        ("T-Shirts", "Casual Sneakers"),
    ),
    Leaf(
        ("Clothing", "Rain Jackets"),
        "Rain Jacket",
        ("rain jacket", "raincoat", "waterproof jacket", "rain shell"),
        ("The North Face", "Columbia", "Patagonia", "Marmot", "Arc'teryx"),
        ((GENDER, GENDERS), (COLOR, APPAREL_COLORS), (SIZE, APPAREL_SIZES)),
        110.0,
        0.5,
        ("Backpacks",),
    ),
    Leaf(
        ("Clothing", "Athletic Socks"),
        "Athletic Socks",
        ("socks", "running socks", "athletic socks", "sport socks"),
        ("Balega", "Darn Tough", "Smartwool", "Nike", "Bombas", "Feetures"),
        ((PACK, ("3-Pack", "6-Pack", "1-Pair")), (COLOR, ("Black", "White", "Grey")), (SIZE, ("S", "M", "L", "XL"))),
        16.0,
        0.45,
        ("Running Shoes",),
    ),
    Leaf(
        ("Clothing", "Leggings"),
        "Leggings",
        ("leggings", "yoga pants", "workout tights"),
        ("Lululemon", "Nike", "Athleta", "Gymshark", "Under Armour"),
        ((GENDER, GENDERS), (COLOR, APPAREL_COLORS), (SIZE, APPAREL_SIZES)),
        60.0,
        0.5,
        ("Yoga Mats",),
    ),
    # --- Electronics ---------------------------------------------------------------------------
    Leaf(
        ("Electronics", "Audio", "Earbuds"),
        "Wireless Earbuds",
        ("earbuds", "earphones", "wireless earbuds", "bluetooth earbuds", "in ear headphones"),
        ("Apple", "Samsung", "Sony", "Jabra", "Anker", "JBL", "Bose"),
        ((COLOR, DEVICE_COLORS),),
        90.0,
        0.6,
        ("Smartphones", "Phone Chargers"),
    ),
    Leaf(
        ("Electronics", "Audio", "Headphones"),
        "Over-Ear Headphones",
        ("headphones", "over ear headphones", "noise cancelling headphones", "headset"),
        ("Sony", "Bose", "Sennheiser", "Audio-Technica", "Beats", "JBL"),
        ((COLOR, DEVICE_COLORS),),
        180.0,
        0.55,
    ),
    Leaf(
        ("Electronics", "Audio", "Soundbars"),
        "Soundbar",
        ("soundbar", "sound bar", "tv speaker"),
        ("Sonos", "Bose", "Samsung", "Vizio", "Yamaha", "LG"),
        ((COLOR, ("Black", "White")), (POWER, ("100W", "200W", "300W", "400W"))),
        250.0,
        0.6,
        ("Televisions",),
    ),
    Leaf(
        ("Electronics", "Phones", "Smartphones"),
        "Smartphone",
        ("smartphone", "cell phone", "mobile phone", "phone"),
        ("Apple", "Samsung", "Google", "Motorola", "OnePlus", "Xiaomi"),
        ((COLOR, DEVICE_COLORS), (CAPACITY, ("128GB", "256GB", "512GB"))),
        650.0,
        0.5,
        ("Phone Cases", "Phone Chargers", "Earbuds"),
    ),
    Leaf(
        ("Electronics", "Phones", "Phone Cases"),
        "Phone Case",
        ("phone case", "phone cover", "protective case"),
        ("OtterBox", "Spigen", "Casetify", "Speck", "ESR"),
        ((COLOR, ("Black", "Clear", "Blue", "Pink", "Green")), (MATERIAL, ("Silicone", "Leather", "Polycarbonate"))),
        25.0,
        0.45,
        ("Smartphones",),
    ),
    Leaf(
        ("Electronics", "Phones", "Phone Chargers"),
        "USB-C Charger",
        ("phone charger", "usb c charger", "fast charger", "wall charger"),
        ("Anker", "Belkin", "Apple", "Samsung", "Ugreen"),
        ((POWER, ("20W", "30W", "45W", "65W")), (COLOR, ("Black", "White"))),
        28.0,
        0.45,
        ("Smartphones", "Laptops"),
    ),
    Leaf(
        ("Electronics", "Computers", "Laptops"),
        "Laptop",
        ("laptop", "notebook computer", "notebook", "ultrabook"),
        ("Lenovo", "Dell", "HP", "Apple", "Asus", "Acer"),
        ((COLOR, ("Silver", "Black", "Grey")), (CAPACITY, ("256GB SSD", "512GB SSD", "1TB SSD"))),
        900.0,
        0.5,
        ("Backpacks", "Phone Chargers"),
    ),
    Leaf(
        ("Electronics", "TV & Video", "Televisions"),
        "Smart TV",
        ("tv", "television", "smart tv", "4k tv"),
        ("Samsung", "LG", "Sony", "TCL", "Hisense", "Vizio"),
        ((CAPACITY, ("43-Inch", "50-Inch", "55-Inch", "65-Inch", "75-Inch")),),
        600.0,
        0.6,
        ("Soundbars",),
    ),
    Leaf(
        ("Electronics", "Wearables", "Smartwatches"),
        "Smartwatch",
        ("smartwatch", "smart watch", "fitness tracker", "fitness watch"),
        ("Apple", "Garmin", "Samsung", "Fitbit", "Amazfit"),
        ((COLOR, DEVICE_COLORS), (CAPACITY, ("41mm", "45mm"))),
        280.0,
        0.55,
        ("Running Shoes",),
    ),
    # --- Home & Kitchen ------------------------------------------------------------------------
    Leaf(
        ("Home & Kitchen", "Kitchen", "Coffee Makers"),
        "Coffee Maker",
        ("coffee maker", "coffee machine", "drip coffee maker", "espresso machine"),
        ("Breville", "De'Longhi", "Cuisinart", "Keurig", "Ninja", "Mr. Coffee"),
        ((CAPACITY, ("4-Cup", "8-Cup", "12-Cup", "14-Cup")), (COLOR, HOME_COLORS)),
        120.0,
        0.65,
        ("Coffee Beans", "Mugs"),
    ),
    Leaf(
        ("Home & Kitchen", "Kitchen", "Blenders"),
        "Blender",
        ("blender", "smoothie blender", "countertop blender", "mixer"),
        ("Vitamix", "Ninja", "Oster", "NutriBullet", "KitchenAid"),
        ((POWER, ("600W", "1000W", "1500W")), (COLOR, HOME_COLORS)),
        90.0,
        0.6,
    ),
    Leaf(
        ("Home & Kitchen", "Kitchen", "Frying Pans"),
        "Frying Pan",
        ("frying pan", "skillet", "fry pan", "nonstick pan"),
        ("Lodge", "T-fal", "All-Clad", "Calphalon", "Le Creuset", "OXO"),
        (
            (CAPACITY, ("8-Inch", "10-Inch", "12-Inch")),
            (MATERIAL, ("Cast Iron", "Stainless Steel", "Nonstick Aluminum")),
        ),
        45.0,
        0.6,
    ),
    Leaf(
        ("Home & Kitchen", "Kitchen", "Electric Kettles"),
        "Electric Kettle",
        ("electric kettle", "kettle", "tea kettle", "water boiler"),
        ("Cosori", "Fellow", "Hamilton Beach", "Breville", "Smeg"),
        ((CAPACITY, ("1L", "1.7L")), (MATERIAL, ("Stainless Steel", "Glass")), (COLOR, HOME_COLORS)),
        45.0,
        0.5,
        ("Green Tea", "Mugs"),
    ),
    Leaf(
        ("Home & Kitchen", "Kitchen", "Mugs"),
        "Coffee Mug",
        ("mug", "coffee mug", "coffee cup", "tea cup"),
        ("Yeti", "Le Creuset", "Ello", "Contigo", "Stanley"),
        (
            (CAPACITY, ("12oz", "16oz", "20oz")),
            (MATERIAL, ("Ceramic", "Stainless Steel", "Glass")),
            (COLOR, HOME_COLORS),
        ),
        16.0,
        0.5,
        ("Coffee Makers", "Coffee Beans"),
    ),
    Leaf(
        ("Home & Kitchen", "Bedding", "Pillows"),
        "Bed Pillow",
        ("pillow", "bed pillow", "sleeping pillow"),
        ("Coop", "Casper", "Tempur-Pedic", "Beckham", "MyPillow"),
        ((CAPACITY, ("Standard", "Queen", "King")), (MATERIAL, ("Memory Foam", "Down", "Polyester"))),
        45.0,
        0.5,
    ),
    # --- Sports & Outdoors ---------------------------------------------------------------------
    Leaf(
        ("Sports & Outdoors", "Fitness", "Yoga Mats"),
        "Yoga Mat",
        ("yoga mat", "exercise mat", "workout mat"),
        ("Manduka", "Gaiam", "Liforme", "Lululemon", "Jade"),
        ((COLOR, APPAREL_COLORS), (CAPACITY, ("4mm", "6mm"))),
        40.0,
        0.55,
        ("Leggings", "Water Bottles"),
    ),
    Leaf(
        ("Sports & Outdoors", "Fitness", "Dumbbells"),
        "Dumbbell Set",
        ("dumbbells", "weights", "dumbbell set", "free weights"),
        ("Bowflex", "CAP Barbell", "Amazon Basics", "Yes4All", "PowerBlock"),
        ((CAPACITY, ("10lb", "20lb", "50lb", "Adjustable")), (MATERIAL, ("Cast Iron", "Neoprene", "Rubber"))),
        80.0,
        0.7,
        ("Water Bottles",),
    ),
    Leaf(
        ("Sports & Outdoors", "Camping", "Tents"),
        "Camping Tent",
        ("tent", "camping tent", "backpacking tent"),
        ("Coleman", "REI", "Big Agnes", "MSR", "Nemo"),
        ((CAPACITY, ("2-Person", "4-Person", "6-Person")), (COLOR, ("Green", "Orange", "Grey", "Blue"))),
        180.0,
        0.6,
        ("Sleeping Bags", "Backpacks"),
    ),
    Leaf(
        ("Sports & Outdoors", "Camping", "Sleeping Bags"),
        "Sleeping Bag",
        ("sleeping bag", "camping sleeping bag", "mummy bag"),
        ("Coleman", "The North Face", "Marmot", "Kelty", "Therm-a-Rest"),
        ((CAPACITY, ("20F", "30F", "40F")), (MATERIAL, ("Down", "Synthetic"))),
        90.0,
        0.55,
        ("Tents",),
    ),
    Leaf(
        ("Sports & Outdoors", "Accessories", "Water Bottles"),
        "Water Bottle",
        ("water bottle", "insulated bottle", "sports bottle", "flask"),
        ("Hydro Flask", "Yeti", "Nalgene", "CamelBak", "Stanley", "Owala"),
        ((CAPACITY, ("18oz", "24oz", "32oz", "40oz")), (COLOR, APPAREL_COLORS)),
        30.0,
        0.4,
        ("Running Shoes", "Yoga Mats"),
    ),
    Leaf(
        ("Sports & Outdoors", "Accessories", "Backpacks"),
        "Backpack",
        ("backpack", "daypack", "hiking backpack", "laptop backpack", "rucksack"),
        ("Osprey", "The North Face", "Herschel", "JanSport", "Deuter"),
        ((CAPACITY, ("20L", "30L", "45L")), (COLOR, APPAREL_COLORS)),
        80.0,
        0.55,
        ("Laptops", "Hiking Boots", "Tents"),
    ),
    # --- Beauty & Personal Care ----------------------------------------------------------------
    Leaf(
        ("Beauty", "Hair Care", "Shampoo"),
        "Shampoo",
        ("shampoo", "hair shampoo", "sulfate free shampoo"),
        ("Pantene", "Olaplex", "Head & Shoulders", "Dove", "OGX"),
        ((CAPACITY, ("12oz", "16oz", "33oz")),),
        12.0,
        0.6,
        ("Conditioner",),
    ),
    Leaf(
        ("Beauty", "Hair Care", "Conditioner"),
        "Conditioner",
        ("conditioner", "hair conditioner", "leave in conditioner"),
        ("Pantene", "Olaplex", "Dove", "OGX", "Aveeno"),
        ((CAPACITY, ("12oz", "16oz", "33oz")),),
        12.0,
        0.6,
        ("Shampoo",),
    ),
    Leaf(
        ("Beauty", "Skin Care", "Moisturizers"),
        "Face Moisturizer",
        ("moisturizer", "face cream", "face moisturizer", "lotion"),
        ("CeraVe", "Neutrogena", "La Roche-Posay", "Cetaphil", "Olay"),
        ((CAPACITY, ("1.7oz", "3oz", "16oz")),),
        18.0,
        0.6,
    ),
    Leaf(
        ("Beauty", "Oral Care", "Electric Toothbrushes"),
        "Electric Toothbrush",
        ("electric toothbrush", "sonic toothbrush", "toothbrush"),
        ("Oral-B", "Philips Sonicare", "Quip", "Fairywill"),
        ((COLOR, ("White", "Black", "Pink", "Blue")),),
        60.0,
        0.6,
    ),
    # --- Toys & Games --------------------------------------------------------------------------
    Leaf(
        ("Toys & Games", "Building Sets"),
        "Building Set",
        ("building set", "building blocks", "construction toy", "brick set"),
        ("LEGO", "Mega Bloks", "K'NEX", "Magna-Tiles"),
        ((CAPACITY, ("250 Pieces", "500 Pieces", "1000 Pieces")),),
        50.0,
        0.7,
    ),
    Leaf(
        ("Toys & Games", "Board Games"),
        "Board Game",
        ("board game", "family game", "strategy game", "tabletop game"),
        ("Hasbro", "Mattel", "Asmodee", "Ravensburger", "Days of Wonder"),
        ((CAPACITY, ("2-4 Players", "2-6 Players", "3-8 Players")),),
        35.0,
        0.45,
    ),
    Leaf(
        ("Toys & Games", "Puzzles"),
        "Jigsaw Puzzle",
        ("jigsaw puzzle", "puzzle", "puzzles for adults"),
        ("Ravensburger", "Buffalo Games", "Cobble Hill", "White Mountain"),
        ((CAPACITY, ("300 Pieces", "500 Pieces", "1000 Pieces")),),
        20.0,
        0.4,
    ),
    # --- Office --------------------------------------------------------------------------------
    Leaf(
        ("Office", "Furniture", "Office Chairs"),
        "Office Chair",
        ("office chair", "desk chair", "ergonomic chair", "computer chair"),
        ("Herman Miller", "Steelcase", "Branch", "Hbada", "Sihoo"),
        ((COLOR, ("Black", "Grey", "White", "Blue")), (MATERIAL, ("Mesh", "Leather", "Fabric"))),
        300.0,
        0.8,
        ("Desk Lamps",),
    ),
    Leaf(
        ("Office", "Lighting", "Desk Lamps"),
        "Desk Lamp",
        ("desk lamp", "led lamp", "reading lamp", "table lamp"),
        ("BenQ", "TaoTronics", "Lepro", "IKEA", "Philips"),
        ((COLOR, ("Black", "White", "Silver")), (POWER, ("8W", "12W", "15W"))),
        40.0,
        0.55,
        ("Office Chairs",),
    ),
    Leaf(
        ("Office", "Supplies", "Paper Notebooks"),
        "Notebook",
        ("journal", "spiral notebook", "notebook paper", "writing pad"),
        ("Moleskine", "Leuchtturm1917", "Five Star", "Rhodia", "Mead"),
        ((COLOR, ("Black", "Blue", "Red", "Green")), (CAPACITY, ("A5", "A4", "Pocket"))),
        14.0,
        0.5,
    ),
    # --- Pet Supplies --------------------------------------------------------------------------
    Leaf(
        ("Pet Supplies", "Dogs", "Dog Food"),
        "Dry Dog Food",
        ("dog food", "dry dog food", "kibble", "puppy food"),
        ("Purina", "Blue Buffalo", "Hill's", "Royal Canin", "Orijen"),
        ((CAPACITY, ("5lb", "15lb", "30lb")),),
        45.0,
        0.55,
        ("Dog Beds",),
    ),
    Leaf(
        ("Pet Supplies", "Dogs", "Dog Beds"),
        "Dog Bed",
        ("dog bed", "pet bed", "orthopedic dog bed"),
        ("Furhaven", "Big Barker", "PetFusion", "K&H"),
        ((CAPACITY, ("Small", "Medium", "Large")), (COLOR, ("Grey", "Brown", "Beige", "Navy"))),
        55.0,
        0.6,
        ("Dog Food",),
    ),
    Leaf(
        ("Pet Supplies", "Cats", "Cat Litter"),
        "Cat Litter",
        ("cat litter", "kitty litter", "clumping litter"),
        ("Tidy Cats", "Arm & Hammer", "Dr. Elsey's", "World's Best"),
        ((CAPACITY, ("10lb", "20lb", "40lb")),),
        20.0,
        0.4,
    ),
    # --- Grocery -------------------------------------------------------------------------------
    Leaf(
        ("Grocery", "Beverages", "Coffee Beans"),
        "Whole Bean Coffee",
        ("coffee beans", "whole bean coffee", "ground coffee", "espresso beans"),
        ("Lavazza", "Peet's", "Starbucks", "Illy", "Death Wish", "Kicking Horse"),
        ((CAPACITY, ("12oz", "2lb", "5lb")),),
        16.0,
        0.45,
        ("Coffee Makers", "Mugs"),
    ),
    Leaf(
        ("Grocery", "Beverages", "Green Tea"),
        "Green Tea",
        ("green tea", "matcha", "tea bags", "loose leaf tea"),
        ("Twinings", "Yogi", "Bigelow", "Ito En", "Harney & Sons"),
        ((PACK, ("20 Bags", "50 Bags", "100 Bags")),),
        9.0,
        0.45,
        ("Electric Kettles", "Mugs"),
    ),
)

#: Model-line names. The generator gives each (brand, leaf) a few, each with a version number.
LINE_NAMES: tuple[str, ...] = (
    "Pegasus", "Vomero", "Ghost", "Glide", "Nova", "Apex", "Pulse", "Aero", "Flex", "Core",
    "Elite", "Summit", "Trail", "Swift", "Boost", "Orbit", "Vista", "Prime", "Fusion", "Zen",
    "Nimbus", "Cloud", "Ultra", "Strata", "Vector", "Echo", "Arc", "Terra", "Atlas", "Halo",
    "Quest", "Ridge", "Breeze", "Spark", "Vertex", "Luna", "Sol", "Crest", "Drift", "Forge",
    "Rush", "Stride", "Kinetic", "Pioneer", "Horizon", "Legacy", "Origin", "Velocity", "Comet", "Glow",
)  # fmt: skip
