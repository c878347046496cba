"""The minors rule's word lists (bot/rules/minors.py reads them).

Latin-script terms are whole words or phrases, matched after disguises are undone; a term may list
words that, right after it, make it something else ("kid goat", "minor details", "naked flame"), and,
written "<word", words that do so right before it ("blue tits", "chicken breasts").
A term ending in "*" matches any word it begins ("minderjährig*"). Terms with accents are matched
only as written with them ("niña" is not the name "Nina"). Cyrillic terms are word beginnings (Russian
inflects); Japanese, Chinese and Korean terms are matched anywhere in the text, spaces ignored.

Sources for what to list: Civitai's and the A1111 community's own minor-safety word lists are not
public; these were written from the forms people use (booru tags, the languages' own words for
child, schoolchild, the school levels, naked and the sexual acts), erring toward recall.
"""

from __future__ import annotations

# Words that, right after a term, make it something else.
_MINOR_AFTER = (
    "details detail imperfections imperfection flaws flaw scratches scratch key keys chord chords scale "
    "changes change injuries injury blemishes blemish damage role roles league character characters "
    "adjustments edits tweaks planet arcana issue issues wrinkles cracks dents noise"
).split()
_KID_AFTER = "goat goats gloves glove leather skin".split()
_CHILD_AFTER = "proof safe lock locks".split()
_SEX_AFTER = "education ed chromosome chromosomes determination differences ratio ratios".split()
_NAKED_AFTER = "mole flame flames eye eyes truth ambition lightbulb bulb wire wires singularity".split()
_NUDE_AFTER = (
    "colored coloured color colour colors colours lipstick lip lips heels heel shoes shoe pumps tones tone "
    "palette makeup nails nail polish beige eyeshadow blush"
).split()

# term -> words that, right after it, mean something else
MINOR_LATIN: dict[str, tuple[str, ...]] = {
    # English
    "child": tuple(_CHILD_AFTER), "children": (), "childs": (), "kid": tuple(_KID_AFTER), "kiddie": (),
    "kiddo": (), "kiddy": (), "minor": tuple(_MINOR_AFTER), "minors": (), "underage": (), "under age": (),
    "loli": (), "lolis": (), "lolicon": (), "lolita": (), "shota": (), "shotacon": (), "toddler": (), "infant": ("of",),
    "newborn": ("calf", "foal", "kitten", "kittens", "puppy", "puppies", "lamb", "lambs", "chick", "chicks"), "preschooler": (), "preschool": (), "kindergartener": (), "kindergartner": (), "kindergarten": (),
    "preteen": (), "pre teen": (), "tween": (), "teen": (), "teenage": ("mutant",), "teenager": (), "teenaged": (),
    "young girl": (), "young boy": (), "little girl": (), "little boy": (), "small child": (), "little kid": (),
    "young kid": (), "jailbait": (), "jail bait": (), "underaged": (), "under aged": (), "pedo": (), "pedophile": (), "paedophile": (), "pedophilia": (),
    "paedophilia": (), "schoolgirl": (), "school girl": (), "schoolboy": (), "school boy": (), "schoolchild": (),
    "schoolchildren": (), "pubescent": (), "prepubescent": (), "pre pubescent": (), "middle school": (),
    "middle schooler": (), "junior high": (), "elementary school": (), "elementary schooler": (),
    "primary school": (), "grade school": (), "grade schooler": (), "high schooler": (), "high school girl": (),
    "high school boy": (), "high school student": (), "nursery school": (),
    # Spanish
    "niña": (), "niño": (), "ninas": (), "ninos": (), "niña pequeña": (), "menor de edad": (), "menores de edad": (),
    "colegiala": (), "infantil": (), "adolescente": (), "preadolescente": (), "nena pequeña": (),
    # Portuguese
    "criança": (), "crianca": (), "criancas": (), "menina": (), "menino": (), "menor de idade": (),
    "menores de idade": (), "novinha": (), "colegial": (),
    # French
    "enfant": (), "fillette": (), "petite fille": (), "petit garçon": (), "petit garcon": (), "gamine": (),
    "gamin": (), "mineure": (), "écolière": (), "ecoliere": (), "écolier": (), "collégienne": (),
    "collegienne": (),
    # German ("Kind", "Kinder" are English words too: minors.py reads them from their capital letter)
    "kleinkind": (), "kleines mädchen": (), "kleines madchen": (),
    "kleines maedchen": (), "junges mädchen": (), "junges madchen": (), "junges maedchen": (),
    "schulmädchen": (), "schulmadchen": (), "schulmaedchen": (), "schülerin": (), "schulerin": (),
    "minderjährig*": (), "minderjahrig*": (), "jugendliche": (),
}  # fmt: skip

SEXUAL_LATIN: dict[str, tuple[str, ...]] = {
    # English
    "nude": tuple(_NUDE_AFTER), "nudes": (), "nudity": (), "nudist": (), "naked": tuple(_NAKED_AFTER),
    "nakedness": (), "nsfw": (), "sex": tuple(_SEX_AFTER), "sexy": (), "sexual": tuple(_SEX_AFTER), "sexually": (), "sexualized": (),
    "sexualised": (), "porn": (), "porno": (), "pornographic": (), "pornography": (), "hentai": (), "ecchi": (),
    "explicit": ("lyrics",), "erotic": (), "erotica": (), "eroticism": (), "lewd": (), "nipple": (),
    "nipples": (), "areola": (), "areolae": (), "genital": (), "genitals": (), "genitalia": (), "penis": (),
    "vagina": (), "vulva": (), "pussy": ("willow", "willows", "cat", "cats"), "cock": ("<weather",), "clitoris": (), "labia": (), "anus": (), "topless": (),
    "bottomless": ("pit", "pits", "brunch", "drinks", "coffee", "mimosas", "cup", "fries"), "undressed": (), "undressing": (), "no clothes": (), "without clothes": (),
    "no clothing": (), "wearing nothing": (), "lingerie": (), "panties": (), "no panties": (),
    "orgasm": (), "cum": ("laude", "<magna", "<summa"), "cumshot": (), "creampie": (), "semen": (),
    "ejaculation": (), "ejaculating": (), "erection": ("of",), "masturbate": (), "masturbating": (), "masturbation": (), "fellatio": (),
    "cunnilingus": (), "blowjob": (), "handjob": (), "footjob": (), "paizuri": (), "intercourse": (),
    "oral sex": (), "anal": (), "rape": (), "raped": (), "molest": (), "molested": (), "molesting": (),
    "grope": (), "groping": (), "bdsm": (), "bondage": (), "fetish": (), "ahegao": (),
    "breasts": ("<chicken", "<turkey", "<duck"), "boobs": (), "tits": ("<blue", "<great", "<coal", "<marsh", "<willow"), "titties": (), "bare breasts": (), "bare ass": (), "bare butt": (), "upskirt": (),
    "pantyshot": (), "cameltoe": (), "spread legs": (), "spreading legs": (), "legs spread": (),
    "seductive": (), "seduction": (), "onlyfans": (), "xxx": (), "stripper": (), "striptease": (),
    "strip tease": (), "slut": (), "slutty": (), "whore": (), "orgy": (), "gangbang": (), "sex position": (),
    "doggystyle": (), "doggy style": (), "missionary position": (), "horny": ("toad", "toads", "lizard", "lizards"), "aroused": (),
    "arousal": (), "kinky": ("hair", "curls"), "lust": (), "lustful": (),
    # Spanish
    "desnuda": (), "desnudo": (), "desnudas": (), "desnudos": (), "sexo": (), "pornografía": (),
    "pornografia": (), "erótica": (), "erótico": (), "erotico": (), "tetas": (), "pezones": (),
    "lencería": (), "lenceria": (), "sin ropa": (), "follando": (), "violación": (),
    # Portuguese
    "nua": (), "nuas": (), "pelada": (), "pelado": (), "peladas": (), "pornô": (), "seios": (), "transando": (),
    "sem roupa": (), "calcinha": (),
    # French
    "nue": (), "nues": (), "sexe": (), "sexuel": (), "sexuelle": (), "érotique": (), "erotique": (),
    "seins": (), "déshabillée": (), "deshabillee": (),
    # German
    "nackt": (), "nackte": (), "nackten": (), "nackter": (), "erotisch": (), "erotische": (), "brüste": (),
    "bruste": (), "titten": (), "entblößt": (), "entblosst": (), "unbekleidet": (), "ficken": (),
}  # fmt: skip

# Russian: word beginnings, after ё -> е.
MINOR_CYRILLIC = (
    "ребен", "ребят", "дети", "детей", "детск", "детям", "девочк", "мальчик", "школьниц", "школьник",
    "несовершеннолет", "подрост", "малолет", "лоли", "шота", "педоф", "младен", "малыш", "первоклас",
)  # fmt: skip
SEXUAL_CYRILLIC = (
    "голая", "голый", "голые", "голой", "голую", "голеньк", "обнаж", "нагая", "нагие", "секс", "порн",
    "эрот", "хентай", "интим", "сиськ", "трусик", "мастурб", "минет", "раздет", "голышом", "нюд",
)  # fmt: skip

# Japanese, Chinese, Korean: anywhere in the text, spaces and punctuation ignored.
MINOR_CJK = (
    "ロリ", "ショタ", "幼女", "幼児", "児童", "女児", "男児", "子供", "子ども", "こども", "小学生", "中学生",
    "未成年", "萝莉", "蘿莉", "正太", "儿童", "兒童", "小孩", "孩子", "女童", "男童", "初中生", "小學生",
    "로리", "쇼타", "아동", "어린이", "미성년", "초등학생", "중학생", "여중생", "남중생", "여고생", "초딩", "중딩",
)  # fmt: skip
SEXUAL_CJK = (
    "ヌード", "裸", "エロ", "セックス", "性交", "乳首", "おっぱい", "まんこ", "ちんこ", "陰部", "わいせつ", "猥褻",
    "淫", "色情", "做爱", "做愛", "乳头", "乳頭", "阴部", "性感", "性爱", "性愛", "成人视频",
    "누드", "나체", "알몸", "섹스", "성관계", "음란", "야한", "벗은", "젖꼭지", "야동", "포르노", "에로",
)  # fmt: skip
# Words holding a term that mean something else: taken out before the CJK terms are looked for.
CJK_NOT = ("裸足", "裸眼", "裸麦", "裸子植物", "赤裸裸", "淫羊藿", "性感染")

# Things with an age ("a 12 year old whisky") rather than people.
AGED_THINGS = (
    "whisky", "whiskey", "scotch", "bourbon", "single malt", "malt", "wine", "bottle", "rum", "cognac", "brandy",
    "port", "cheese", "tree", "oak", "house", "home", "building", "car", "truck", "dog", "cat", "horse",
    "company", "business", "brand", "guitar", "violin", "piano", "computer", "laptop", "phone", "game", "movie",
    "film", "song", "album", "photo", "photograph", "picture", "painting", "tradition", "recipe", "castle",
    "church", "temple", "bridge", "ship", "boat", "bike", "bicycle", "tortoise", "turtle", "parrot", "barrel",
    "cask", "vintage", "sourdough", "starter", "bonsai", "vine", "vines", "forest", "garden", "tattoo",
)  # fmt: skip

NUMBER_WORDS = (
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
)  # fmt: skip
ORDINAL_WORDS = (
    "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "eleventh",
    "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth",
)  # fmt: skip
