"""A small real text sample for tests: 90 human-rated movie-review snippets.

Every 110th sentence of ``movieReviewSnippets_GroundTruth.txt`` (ASCII, 20-220 characters) from
the source archive of ``vaderSentiment==3.3.2`` on PyPI (MIT license, Copyright (c) 2016 C.J. Hutto;
Hutto & Gilbert, "VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social Media
Text", ICWSM 2014; the snippets come from Pang & Lee's Rotten Tomatoes data). ``rating`` is the
mean human rating (-4..4) and ``label`` is 1 when it is > 0, as in the ``vader:movie`` data source.

Shipped as Python (not a data file) so it is installed with the package and needs no network:
plugin authors' tests get real sentences offline.
"""

from __future__ import annotations

from pathlib import Path

# (id in the source file, mean rating, text)
MOVIE_SNIPPETS: tuple[tuple[str, float, str], ...] = (
    ('1', 2.26666666667, "The Rock is destined to be the 21st Century's new ''Conan'' and that he's going to make a splash even greater than Arnold Schwarzenegger, Jean Claud Van Damme or Steven Segal."),
    ('111', 0.588235294118, "Hip hop has a history, and it's a metaphor for this love story."),
    ('221', 3.0, "This is one of Polanski's best films."),
    ('331', 1.93333333333, "Farrell ... thankfully manages to outshine the role and successfully plays the foil to Willis's world weary colonel."),
    ('441', 2.6, 'Disturbing and brilliant documentary.'),
    ('551', 2.0625, 'A historical epic with the courage of its convictions about both scope and detail.'),
    ('661', 2.73333333333, 'What Jackson has accomplished here is amazing on a technical level.'),
    ('771', 1.40740740741, "Full Frontal is the antidote for Soderbergh fans who think he's gone too commercial since his two Oscar nominated films in 2000"),
    ('881', 3.0, 'Invincible is a wonderful movie.'),
    ('991', 1.52, "To the film's credit, the acting is fresh and unselfconscious, and Munch is a marvel of reality versus sappy sentiment."),
    ('1101', 2.2962962963, "Not only are the special effects and narrative flow much improved, and Daniel Radcliffe more emotionally assertive this time around as Harry, but the film conjures the magic of author J.K. Rowling's books."),
    ('1211', 2.23529411765, "For the most part, director Anne Sophie Birot's first feature is a sensitive, extraordinarily well acted drama."),
    ('1321', 1.1875, 'Not a film to rival To Live, but a fine little amuse bouche to keep your appetite whetted.'),
    ('1431', 1.47058823529, 'Smith is careful not to make fun of these curious owners of architectural oddities. Instead, he shows them the respect they are due.'),
    ('1651', 1.33333333333, "Frida isn't that much different from many a Hollywood romance. What sets it apart is the vision that Taymor, the avant garde director of Broadway's The Lion King and the film Titus, brings."),
    ('1761', 1.63157894737, 'It challenges, this nervy oddity, like modern art should.'),
    ('1871', 2.9, 'A real winner    smart, funny, subtle, and resonant.'),
    ('1981', 1.9375, '...once the true impact of the day unfolds, the power of this movie is undeniable.'),
    ('2091', 1.4347826087, 'Unlike most anime, whose most ardent fans outside Japan seem to be introverted young men with fantasy fetishes, Metropolis never seems hopelessly juvenile.'),
    ('2201', -1.05263157895, "...hits every cliche we've come to expect, including the assumption that ''crazy'' people are innocent, childlike and inherently funny."),
    ('2311', 2.0, "would make an excellent companion piece to the similarly themed 'The French Lieutenant's Woman.'"),
    ('2421', 1.66666666667, 'Offers an interesting look at the rapidly changing face of Beijing.'),
    ('2531', 2.70588235294, 'A wild ride juiced with enough energy and excitement for at least three films.'),
    ('2641', 0.0, 'Cremaster 3 is at once a tough pill to swallow and a minor miracle of self expression.'),
    ('2751', 1.0, "Brings awareness to an issue often overlooked    women's depression."),
    ('2861', 2.29166666667, 'Hawn and Sarandon form an acting bond that makes The Banger Sisters a fascinating character study with laughs to spare.'),
    ('2971', 2.23529411765, "has far more energy, wit and warmth than should be expected from any movie with a ''2'' at the end of its title."),
    ('3081', 0.291666666667, "Some people want the ol' ball and chain and then there are those who just want the Ball and Chain."),
    ('3191', 2.16, 'The movie enters a realm where few non porn films venture, and comes across as darkly funny, energetic, and surprisingly gentle.'),
    ('3301', 1.4, "Nohe's documentary about the event is sympathetic without being gullible: He isn't blind to the silliness, but also captures moments of spontaneous creativity and authentic co operative interaction."),
    ('3411', 1.0, "Trapped won't score points for political correctness, but it may cause parents a few sleepless hours    a sign of its effectiveness."),
    ('3521', 1.05, 'Manages to please its intended audience    children    without placing their parents in a coma like state.'),
    ('3631', 1.25, "This isn't exactly profound cinema, but it's good natured and sometimes quite funny."),
    ('3741', 1.47368421053, 'The Pinochet Case is a searing album of remembrance from those who, having survived, suffered most.'),
    ('3851', 1.51851851852, 'The observations of this social/economic/urban environment are canny and spiced with irony.'),
    ('3961', -0.347826086957, 'This one is strictly a lightweight escapist film.'),
    ('4071', 2.57142857143, 'One of those rare films that seems as though it was written for no one, but somehow manages to convince almost everyone that it was put on the screen, just for them.'),
    ('4181', 0.48275862069, "(Stephen) Earnhart's film is more about the optimism of a group of people who are struggling to give themselves a better lot in life than the ones they currently have."),
    ('4291', 1.0, "One of the pleasures in Walter's documentary ... is the parade of veteran painters, confounded dealers, and miscellaneous bohos who expound upon the subject's mysterious personality without ever explaining him."),
    ('4401', 2.5, 'Blisteringly rude, scarily funny, sorrowfully sympathetic to the damage it surveys, the film has in Kieran Culkin a pitch perfect Holden.'),
    ('4731', 1.58823529412, 'Symbolically, Warm Water Under a Red Bridge is a celebration of feminine energy, a tribute to the power of women to heal.'),
    ('4841', 3.35294117647, "One of the year's best films, featuring an Oscar worthy performance by Julianne Moore."),
    ('4951', 2.61111111111, "First and foremost...the reason to go see ''Blue Crush'' is the phenomenal, water born cinematography by David Hennings."),
    ('5061', 1.375, 'An entertaining, if ultimately minor, thriller.'),
    ('5171', -1.85, 'Here, common sense flies out the window, along with the hail of bullets, none of which ever seem to hit Sascha.'),
    ('5281', -1.78260869565, "An erotic thriller that's neither too erotic nor very thrilling, either."),
    ('5391', -1.13333333333, 'All in all, Road to Perdition is more in love with strangeness than excellence.'),
    ('5501', 0.133333333333, 'A sincere but dramatically conflicted gay coming of age tale.'),
    ('5611', -1.90909090909, 'Laggard drama wending its way to an uninspired philosophical epiphany.'),
    ('5831', -2.44444444444, "All the movie's narrative gymnastics can't disguise the fact that it's inauthentic at its core and that its story just isn't worth telling."),
    ('5941', -0.666666666667, 'The film thrusts the inchoate but already eldritch Christian Right propaganda machine into national media circles.'),
    ('6051', -1.78947368421, "Hope keeps arising that the movie will live up to the apparent skills of its makers and the talents of its actors, but it doesn't."),
    ('6161', -2.33333333333, 'Cal is an unpleasantly shallow and immature character with whom to spend 110 claustrophobic minutes.'),
    ('6271', -1.63157894737, "Merely (and literally) tosses around sex toys and offers half hearted paeans to empowerment that are repeatedly undercut by the brutality of the jokes, most at women's expense."),
    ('6381', -2.82352941176, "An ill conceived jumble that's not scary, not smart and not engaging."),
    ('6601', -1.08333333333, "Although sensitive to a fault, it's often overwritten, with a surfeit of weighty revelations, flowery dialogue, and nostalgia for the past and roads not taken."),
    ('6711', -2.44444444444, "You really have to wonder how on earth anyone, anywhere could have thought they'd make audiences guffaw with a script as utterly diabolical as this."),
    ('6931', -1.4347826087, "The problem with this film is that it lacks focus. I sympathize with the plight of these families, but the movie doesn't do a very good job conveying the issue at hand."),
    ('7041', -2.3125, 'Makes for a pretty unpleasant viewing experience.'),
    ('7151', -1.77777777778, "In the end, Ted Bundy's only justification is the director's common but unexplored fascination with the frustrated maniac; there's no larger point, and little social context."),
    ('7261', -0.944444444444, "The story is familiar from its many predecessors; like them, it eventually culminates in the not exactly  stunning insight that crime doesn't pay."),
    ('7371', -1.875, "Wallace seems less like he's been burning to tell a war story than he's been itching to somehow tack one together"),
    ('7481', -1.3125, 'The movie bounces all over the map.'),
    ('7591', -2.19047619048, "If you're looking for comedy to be served up, better look elsewhere."),
    ('7701', -2.25, 'High Crimes miscasts nearly every leading character.'),
    ('7811', -2.23529411765, 'The plot is straight off the shelf, the performances are television  caliber and the message of providing solace through deception is a little creepy.'),
    ('7921', -2.66666666667, "A great ending doesn't make up for a weak movie, and Crazy as Hell doesn't even have a great ending."),
    ('8031', -1.83333333333, 'This film is full of rabbits. Brimful. But like most rabbits, it seems to lack substance.'),
    ('8141', -2.16666666667, 'The movie generates plot points with a degree of randomness usually achieved only by lottery drawing.'),
    ('8251', -2.3125, "It's bedeviled by labored writing and slack direction."),
    ('8361', -2.17647058824, 'A small fortune in salaries and stunt cars might have been saved if the director, Tom Dey, had spliced together bits and pieces of Midnight Run and 48 Hours (and, for that matter, Shrek).'),
    ('8471', -3.13333333333, 'The script is a disaster, with cloying messages and irksome characters.'),
    ('8581', -1.63157894737, 'Those who are only mildly curious, I fear, will be put to sleep or bewildered by the artsy and often pointless visuals.'),
    ('8691', -1.57142857143, "Russell lacks the visual panache, the comic touch, and perhaps the budget of Sommers's title bout features."),
    ('8801', -1.92592592593, "The movie's blatant derivativeness is one reason it's so lackluster."),
    ('8911', -1.44444444444, 'Something must have been lost in the translation.'),
    ('9021', -1.0, 'Gorgeous to look at but insufferably tedious and turgid...a curiously constricted epic.'),
    ('9131', -2.46153846154, "turns a potentially interesting idea into an excruciating film school experience that plays better only for the film's publicists or for people who take as many drugs as the film's characters"),
    ('9241', -2.41176470588, 'A laughable    or rather, unlaughable    excuse for a film.'),
    ('9351', -2.72222222222, "The story's pathetic and the gags are puerile."),
    ('9461', -1.31578947368, 'The kind of movie that leaves vague impressions and a nasty aftertaste but little clear memory of its operational mechanics.'),
    ('9571', -1.85, "Maid in Manhattan proves that it's easier to change the sheets than to change hackneyed concepts when it comes to dreaming up romantic comedies."),
    ('9681', -2.66666666667, "This overlong infomercial, due out on video before month's end, is tepid and tedious."),
    ('9791', -1.40740740741, "The feature length stretch ... strains the show's concept."),
    ('9901', -1.90909090909, "Dull, a road trip movie that's surprisingly short of both adventure and song."),
    ('10011', -2.44444444444, "Lyne's latest, the erotic thriller Unfaithful, further demonstrates just how far his storytelling skills have eroded."),
    ('10121', -1.31578947368, "Talkiness isn't necessarily bad, but the dialogue frequently misses the mark."),
    ('10231', -0.411764705882, 'This will go on so long as there are moviegoers anxious to see strange young guys doing strange guy things.'),
    ('10341', 1.5, "'Stock up on silver bullets for director Neil Marshall's intense freight train of a film.'"),
    ('10451', 0.730769230769, 'Witless but watchable.'),
)


def rows() -> list[dict[str, object]]:
    """The sample as records with ``text``, ``rating`` and ``label`` (1 when the rating is > 0)."""
    return [{"text": text, "rating": rating, "label": int(rating > 0)} for _, rating, text in MOVIE_SNIPPETS]


def write_jsonl(path: Path) -> Path:
    """Write the sample as a JSON-lines file (one record per line), a valid hfcompress data spec."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows()))
    return path
