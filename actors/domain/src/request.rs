//! Who asks for a decision, where and how: the parts of a request that actors reason about.

use serde::{Deserialize, Serialize};

macro_rules! named_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The lowercase name used in files, metrics and logs.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// Parses the lowercase name.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum!(
    /// Where a decision is shown.
    Surface {
        /// Home page or app start screen.
        Home => "home",
        /// A product detail page.
        ProductPage => "product_page",
        /// The cart.
        Cart => "cart",
        /// Checkout.
        Checkout => "checkout",
        /// Search results.
        Search => "search",
        /// A screen or shelf display in a store aisle.
        StoreAisle => "store_aisle",
        /// A kiosk's idle screen.
        KioskIdle => "kiosk_idle",
        /// A category listing.
        CategoryPage => "category_page",
        /// An email being rendered.
        Email => "email",
    }
);

named_enum!(
    /// Which client asks.
    Channel {
        /// Not given by the caller.
        Unspecified => "unspecified",
        /// Web storefront.
        Web => "web",
        /// Mobile app.
        App => "app",
        /// In-store kiosk.
        Kiosk => "kiosk",
        /// Point of sale.
        Pos => "pos",
        /// A store associate's handheld.
        AssociateHandheld => "associate_handheld",
        /// Email renderer.
        Email => "email",
    }
);

named_enum!(
    /// A shopper's loyalty tier; offers can require a minimum tier.
    LoyaltyTier {
        /// Not a member, or not known.
        None => "none",
        /// Silver.
        Silver => "silver",
        /// Gold.
        Gold => "gold",
        /// Platinum.
        Platinum => "platinum",
    }
);

named_enum!(
    /// A verified age band.
    AgeBand {
        /// Not known.
        Unknown => "unknown",
        /// Younger than 18.
        Under18 => "under_18",
        /// 18 to 20.
        From18To20 => "18_to_20",
        /// 21 or older.
        From21 => "21_plus",
    }
);

impl AgeBand {
    /// The lowest age in the band (0 when unknown).
    pub fn min_age(self) -> u8 {
        match self {
            AgeBand::Unknown | AgeBand::Under18 => 0,
            AgeBand::From18To20 => 18,
            AgeBand::From21 => 21,
        }
    }
}

/// What the storefront knows about the shopper beyond the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShopperAttributes {
    /// Whether the shopper's age was verified.
    pub age_verified: bool,
    /// The verified age band (ignored unless verified).
    pub age_band: AgeBand,
    /// Loyalty tier.
    pub loyalty_tier: LoyaltyTier,
}

impl Default for ShopperAttributes {
    fn default() -> Self {
        Self {
            age_verified: false,
            age_band: AgeBand::Unknown,
            loyalty_tier: LoyaltyTier::None,
        }
    }
}

impl ShopperAttributes {
    /// The age the shopper is known to have reached: the band's lower bound when verified, else 0.
    pub fn verified_min_age(&self) -> u8 {
        if self.age_verified {
            self.age_band.min_age()
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Surface::ALL {
            assert_eq!(Surface::parse(s.as_str()), Some(*s));
        }
        for c in Channel::ALL {
            assert_eq!(Channel::parse(c.as_str()), Some(*c));
        }
        assert_eq!(LoyaltyTier::parse("gold"), Some(LoyaltyTier::Gold));
        assert_eq!(Surface::parse("nowhere"), None);
    }

    #[test]
    fn unverified_age_counts_as_zero() {
        let mut a = ShopperAttributes {
            age_band: AgeBand::From21,
            ..Default::default()
        };
        assert_eq!(a.verified_min_age(), 0);
        a.age_verified = true;
        assert_eq!(a.verified_min_age(), 21);
    }
}
