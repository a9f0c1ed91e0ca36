"""Write db/common_passwords.txt: passwords too common to accept, built offline from well-known lists.

Sources (from memory of the public leak top lists, e.g. the SplashData/NordPass yearly "worst
passwords" and the head of RockYou): the most common passwords themselves, those words with the
suffixes people add to reach a length rule, doubled words, keyboard walks, repeated characters,
digit runs, season/month + year, and words of this product's own domain. db.accounts compares a
password lower-cased and with whitespace removed against this list. Re-run after editing:

    .venv/bin/python scripts/make_common_passwords.py
"""

from __future__ import annotations

from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "db" / "common_passwords.txt"

TOP = """
123456 password 12345678 qwerty 123456789 12345 1234 111111 1234567 dragon 123123 baseball abc123
football monkey letmein 696969 shadow master 666666 qwertyuiop 123321 mustang 1234567890 michael
654321 superman 1qaz2wsx 7777777 121212 000000 qazwsx 123qwe killer trustno1 jordan jennifer
zxcvbnm asdfgh hunter buster soccer harley batman andrew tigger sunshine iloveyou charlie robert
thomas hockey ranger daniel starwars klaster 112233 george computer michelle jessica pepper 1111
zxcvbn 555555 11111111 131313 freedom 777777 pass maggie 159753 aaaaaa ginger princess joshua
cheese amanda summer love ashley nicole chelsea biteme matthew access yankees 987654321 dallas
austin thunder taylor matrix welcome admin passw0rd password1 password123 welcome1 qwerty123
1q2w3e4r 1q2w3e zaq12wsx qwe123 secret login changeme default root toor administrator guest test
test123 hello hello123 whatever flower lovely babygirl angel samsung apple google internet
blahblah superstar azerty donald qwertz abcdef abcd1234 aa123456 1qazxsw2 password! p@ssw0rd
p@ssword pa55word pa$$word letmein1 monkey1 dragon1 iloveyou1 sunshine1 princess1 football1
baseball1 shadow1 master1 jesus jesus1 christ heaven mother father family friends forever
lovers killer1 ninja jordan23 michael1 charlie1 liverpool arsenal chelsea1 manchester barcelona
realmadrid juventus pokemon naruto minecraft fortnite roblox zelda mario pikachu spiderman
ironman avengers marvel hulk thor loki gandalf frodo hobbit matrix1 neo morpheus trinity
computer1 internet1 windows linux ubuntu debian apple123 android iphone samsung1 nokia
motorola server database oracle mysql postgres sqlserver redhat cisco router network wifi
wireless security secure private hidden hidden1 unknown nothing nobody someone anything
everything summer1 winter spring autumn january february march april may june july august
september october november december monday tuesday wednesday thursday friday saturday sunday
purple orange yellow green blue black white silver golden red pink brown violet maroon
diamond crystal emerald ruby sapphire pearl platinum phoenix falcon eagle tiger lion wolf
bear shark dolphin panther jaguar cobra viper python scorpion spider butterfly kitten puppy
doggie kitty bunny teddy cookie cupcake chocolate candy sugar honey peanut butter coffee
banana cherry strawberry lemon mango peach apple1 pumpkin tomato potato pepper1 ginger1
cheese1 pizza burger hotdog sandwich beer whiskey vodka tequila martini wine party rockstar
rocknroll metallica nirvana beatles elvis madonna britney eminem tupac 50cent drake beyonce
rihanna shakira justin bieber selena taylor1 swift adele ronaldo messi neymar beckham
jordan1 kobe lebron tiger1 woods federer nadal serena hello1 hellokitty qwerty1 asdfgh1
zxcvbnm1 asdf1234 zxcv1234 qwer1234 1234qwer abcd123 abc12345 a1b2c3 a1b2c3d4 aaaaaa1
q1w2e3 q1w2e3r4 q1w2e3r4t5 1a2b3c 1a2b3c4d 123abc 123456a 123456q a123456 q123456 a12345
111222 112233445566 121212121212 123654 147258 147258369 159357 258456 321321 369369 456123
456789 741852963 789456 789456123 852456 963852741 987654 999999 888888 222222 333333 444444
"""

SUFFIXES = [
    "", "1", "12", "123", "1234", "12345", "123456", "1234567", "12345678", "123456789", "1234567890",
    "!", "!!", "1!", "12!", "123!", "1234!", "@123", "#1", "01", "007", "69", "99", "000", "2000",
]  # fmt: skip
YEARS = [str(year) for year in range(1990, 2031)]
SEASONS = (
    "spring summer autumn fall winter january february march april may june july august september "
    "october november december"
).split()
WALKS = """
qwertyuiop qwertyuiopasdf qwertyuiopasdfgh qwertyuiopasdfghjkl asdfghjkl asdfghjkl123 zxcvbnm123
zxcvbnm12345 1qaz2wsx3edc 1qaz2wsx3edc4rfv 1qaz2wsx3edc4rfv5tgb zaq12wsxcde3 zaq1xsw2cde3 q1w2e3r4t5y6
q1w2e3r4t5y6u7i8 1q2w3e4r5t6y 1q2w3e4r5t6y7u8i 1q2w3e4r5t6y7u8i9o0p qazwsxedcrfv qazwsxedcrfvtgb
!qaz2wsx#edc !qaz@wsx#edc 1234qwerasdf qwer1234asdf qwerasdfzxcv 1234qwerasdfzxcv poiuytrewq12
poiuytrewqasdf mnbvcxzlkjhg lkjhgfdsapoiuy 0987654321qwerty qwertyuiop123 qwertyuiop1234
qwerty123456 qwerty12345678 qwertyqwerty asdfasdfasdf zxcvzxcvzxcv 1qazxsw23edc 2wsx3edc4rfv
3edc4rfv5tgb qawsedrftgyh azertyuiop azertyuiop123 qwertzuiop qwertzuiop123 !@#$%^&*()
!@#$%^&*()_+ 1!2@3#4$5%6^ 123!@#qweasd 123qweasdzxc qweasdzxc123 qweasdzxcqwe 147852369000
""".split()
DOMAIN = """
chexnet chexnetstudio chexnet12345 chexnet123456 chexnet2024 chexnet2025 chexnet2026 chexnetadmin
chestxray chestxray14 chestxray123 chestxray1234 xray12345678 xray123456789 radiology radiology123
radiology1234 radiologist radiologist1 hospital hospital123 hospital1234 clinician clinician123
clinician1234 doctor123456 doctordoctor nurse1234567 pneumonia123 pneumothorax effusion1234
densenet121 densenet1234 deeplearning machinelearning artificialintelligence administrator1
administrator123 adminadmin adminadmin12 adminadmin123 admin1234567 admin12345678 admin123456789
superadmin superadmin123 rootroot1234 changeme1234 changemenow changeme123! welcome12345
welcome123456 welcometohospital letmein12345 letmeinplease passwordpassword password12345678
mypassword123 mysecretpassword secretpassword supersecret supersecret123 topsecret123
correcthorsebatterystaple correct horse battery staple trustno1trustno1 iloveyou12345
iloveyoubaby iloveyouforever iloveyousomuch ihateyou1234 opensesame123 default12345 guest1234567
temppassword temporary123 password2024 password2025 password2026 newpassword123 newpassword1234
""".split()


def generate() -> list[str]:
    words = TOP.split()
    found: dict[str, None] = dict.fromkeys(word.lower() for word in words)
    for word in words:
        if not word.isalpha():
            continue
        for suffix in SUFFIXES + YEARS:
            candidate = word + suffix
            if len(candidate) >= 12:
                found.setdefault(candidate.lower())
        doubled = word * 2
        if len(doubled) >= 12:
            found.setdefault(doubled.lower())
    for season in SEASONS:
        for year in YEARS[-15:]:
            for end in ("", "!", "!!", "#"):
                candidate = season + year + end
                if len(candidate) >= 12:
                    found.setdefault(candidate)
    for char in "abcdefghijklmnopqrstuvwxyz0123456789!*.":
        for length in (12, 13, 14, 15, 16, 20):
            found.setdefault(char * length)
    digits = "1234567890" * 3
    for length in range(12, 21):
        found.setdefault(digits[:length])
        found.setdefault("0987654321098765432109"[:length])
    for run in ("123", "1234", "12345", "abc", "abcd", "qwe", "asd", "zxc", "qaz", "wsx"):
        repeated = run * (12 // len(run) + 1)
        found.setdefault(repeated[:12])
        found.setdefault(run * 4)
    found.update(dict.fromkeys(walk.lower() for walk in WALKS + DOMAIN))
    return list(found)


def main() -> None:
    entries = generate()
    header = (
        "# Passwords too common to accept (generated by scripts/make_common_passwords.py; do not edit by "
        "hand).\n# Compared lower-cased and without whitespace. One per line.\n"
    )
    OUT.write_text(header + "\n".join(entries) + "\n", encoding="utf-8")
    long_ones = sum(len(entry) >= 12 for entry in entries)
    print(f"Wrote {len(entries):,} passwords ({long_ones:,} of 12+ characters) to {OUT}.")


if __name__ == "__main__":
    main()
